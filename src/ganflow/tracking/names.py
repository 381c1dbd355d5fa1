"""The names ganflow gives things in MLflow: run and model-version tags, the logged model, the alias."""

MODEL_NAME = "generator"  # the logged model's name inside its run
CHAMPION = "champion"  # the registered model's alias for the best version at equal protocol

TAG_DVC_EXP = "dvc.exp_name"
TAG_DVC_BASELINE = "dvc.baseline_rev"
TAG_RESUMED_FROM = "ganflow.resumed_from_run"
TAG_RESUMED_STEP = "ganflow.resumed_from_step"
TAG_GAP = "ganflow.tracking_gap"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TAG_NOTE = "mlflow.note.content"  # the run's description in the UI
TAG_PARENT = "mlflow.parentRunId"
TAG_USER = "mlflow.user"
TAG_BASELINE_COMMIT = "ganflow.baseline_commit"
TAG_PARAMS_DIFF = "ganflow.params_diff"
TAG_DIRTY = "ganflow.code_dirty"
TAG_DATA = "ganflow.data_sha256"
TAG_EVALUATOR = "ganflow.evaluator_sha256"
TAG_PROJECT = "ganflow.project_root"  # where the run's project lives (an attempt marks only its own runs)
TAG_STATUS = "ganflow.status"  # of a model version: champion | candidate
TAG_GENERATOR = "ganflow.generator_sha256"  # of a training run: the generator it wrote (evaluate finds its run by it)
TAG_CHECKPOINT = "ganflow.checkpoint_sha256"  # of a training run: its last checkpoint (a resume finds its run by it)
TAG_TRAIN_RUN = "ganflow.train_run_id"  # of an evaluation run: the run that trained the model it scores
TAG_PROTOCOL = "protocol"  # of a model version and an evaluation run: the evaluation protocol's hash
TAG_METRIC = "ganflow.metric"  # of a model version: which score the champion is decided on
TAG_LOGGED_IMAGES = "mlflow.loggedImages"  # MLflow's: the run has step-logged images (the UI's image slider)
TAG_EVAL_DATA = "ganflow.eval_data_sha256"  # of an evaluation run: the prepared data it was scored against (prefix)
