"""Each stage's MLflow run policy: which run a stage logs into, what it logs, when a model version
is registered and promoted, and what closes a run. The stages call one function each."""

from __future__ import annotations

import getpass
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ganflow import metrics
from ganflow.config import flatten
from ganflow.tracking.registry import annotate, contract, log_model, promote
from ganflow.tracking.names import (TAG_BASELINE_COMMIT, TAG_CHECKPOINT, TAG_DATA, TAG_EVAL_DATA, TAG_EVALUATOR, TAG_GENERATOR,
                                    TAG_NOTE, TAG_PARENT, TAG_PROJECT, TAG_PROTOCOL, TAG_RESUMED_FROM, TAG_RESUMED_STEP,
                                    TAG_TRAIN_RUN, TAG_USER)
from ganflow.tracking.provenance import dvc_tags, provenance, stage_inputs
from ganflow.tracking.run import Tracker
from ganflow.tracking.store import project_root

if TYPE_CHECKING:
    import numpy as np

    from ganflow.config import Params
    from ganflow.outputs import TrainPaths

log = logging.getLogger("ganflow.tracking")

DVC_YAML, DVC_LOCK = "dvc.yaml", "dvc.lock"
ATTEMPT = Path(".ganflow") / "train-run.json"  # names the train stage's open run while it trains


class LoopHooks:
    """What the training loop reports (the shape of training.Hooks), into the tracker's run."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.note = ""  # the run's description, which the first estimate is added to

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step)

    def on_grid(self, grid_hwc: np.ndarray, step: int) -> None:
        self.tracker.log_image(grid_hwc, "train_grid", step)

    def on_eta(self, text: str) -> None:
        self.tracker.set_tags({TAG_NOTE: f"{self.note}\n\n**Estimate at the start:** {text}".strip()})


@dataclass(frozen=True)
class TrainInputs:
    """What the train stage's run records of its inputs: the params (and their file), the evaluator, and
    the training images with their sha256 and source."""

    params: Params
    params_file: str | Path
    evaluator: str | Path
    images: np.ndarray
    data_sha256: str
    source: str


def train_run(tracker: Tracker, trainer: Any, train: Callable[[LoopHooks], dict[str, float]],
              history: list[tuple[list[list[float]], tuple[str, ...]]], inputs: TrainInputs, paths: TrainPaths,
              main: bool = True) -> dict[str, float] | None:
    """The train stage's run around `train(hooks)` (the training loop; returns its summary); `paths`:
    the stage's outputs. No run id goes into a DVC-tracked file (a fresh clone
    reproduces every one byte for byte): a finished run is tagged with the sha256 of the generator and
    the checkpoint it wrote, and is found again by them (evaluate by the generator, a resume by the checkpoint).

    - Nothing left to train (`dvc repro -f`, a logging-only change) and a FINISHED run of this store
      wrote the checkpoint: no new run, no new model version; `train` writes the outputs again from the
      checkpoint. Returns None. (A run killed after its last step is continued by a new run instead,
      which logs the model it could not.) Spools left by earlier stages are replayed first.
    - Else a new run: provenance tags, params, the params file, the training data; a resumed attempt
      links to the run that wrote its checkpoint (or, for a checkpoint no finished run wrote, to the
      attempt this clone left open, closed as KILLED) and carries its whole `history` (rows, columns);
      the loop logs through the hooks; then the summary, the generator (registered and described), the
      two digests. .ganflow/train-run.json names the open run, so a run killed before its first
      checkpoint is marked KILLED by the next attempt. A failure closes the run as FAILED.
    """
    hooks, params = LoopHooks(tracker), inputs.params
    tracker.replay_spools()  # first: a run that finished while the store was down is closed as FINISHED now
    resumed = trainer.resumed_step is not None
    found = tracker.find_run(TAG_CHECKPOINT, metrics.file_sha256(paths.checkpoint)) if resumed and tracker.enabled else None
    wrote = found.info.run_id if found else None
    if wrote and trainer.state.step >= params.train.steps:
        train(hooks)  # the tracker has no run: nothing is logged
        if main:
            log.info("nothing left to train: the model and MLflow run %s are the ones that trained it "
                     "(train.resume: false retrains from scratch)", wrote)
        return None
    previous = wrote or (_attempt() if resumed else None)

    flat = flatten(params)
    name, tags = provenance(flat, inputs.params_file, {TAG_DATA: inputs.data_sha256, TAG_PROJECT: str(project_root()),
                                                       TAG_EVALUATOR: metrics.file_sha256(inputs.evaluator)})
    tracker.start(name=name, tags=tags)
    hooks.note = tags.get(TAG_NOTE, "")
    attempt = _claim_attempt(tracker)
    tracker.log_params(flat)
    tracker.log_artifact(inputs.params_file)
    tracker.log_dataset(inputs.images, {"source": f"{inputs.source} (training split)", "sha256": inputs.data_sha256,
                                        "count": len(inputs.images)})
    if resumed:
        if previous:
            _mark_killed(tracker, previous)
        tracker.set_tags({TAG_RESUMED_FROM: str(previous), TAG_RESUMED_STEP: str(trainer.resumed_step)})
        for rows, columns in history:
            tracker.log_history(rows, columns)
        if previous:  # its sample grids up to the resume: the image slider starts at step 0 again
            tracker.copy_step_images(previous, trainer.resumed_step)
    try:
        summary = train(hooks)
        tracker.log_metrics(summary)
        if main:
            net = trainer.net_cfg
            log_model(tracker, *trainer.export_generator(),
                      metadata={"z_dim": net.z_dim, "n_classes": net.n_classes, "arch": trainer.cfg.arch,
                                **({"class_shares": trainer.gs.class_shares} if trainer.gs.class_shares else {})})
            annotate(tracker, {"run_name": name, "data_sha256": inputs.data_sha256, **dvc_tags(),
                               TAG_BASELINE_COMMIT: tags[TAG_BASELINE_COMMIT]}, contract(trainer.cfg.arch, net))
        if tracker.enabled:  # what the run wrote, by which the next stages find it
            tracker.set_tags({TAG_GENERATOR: metrics.file_sha256(paths.generator),
                              TAG_CHECKPOINT: metrics.file_sha256(paths.checkpoint)})
    except BaseException:
        tracker.end("FAILED")
        raise
    if tracker.end() and attempt is not None:
        attempt.unlink(missing_ok=True)
    return summary


def _attempt() -> str | None:
    """The run an earlier attempt of this clone left open (named in ATTEMPT), if any."""
    try:
        return json.loads(ATTEMPT.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _claim_attempt(tracker: Tracker) -> Path | None:
    """Mark the run an earlier attempt left open (named in ATTEMPT) as KILLED; name this run there."""
    if not tracker.run_id:
        return None
    previous = _attempt()
    if previous and previous != tracker.run_id:
        _mark_killed(tracker, previous)
    try:
        ATTEMPT.parent.mkdir(parents=True, exist_ok=True)
        ATTEMPT.write_text(json.dumps({"run_id": tracker.run_id}) + "\n")
    except OSError as err:
        log.warning("%s cannot be written (%s): if this attempt is killed, its run stays RUNNING", ATTEMPT, err)
        return None
    return ATTEMPT


def _mark_killed(tracker: Tracker, run_id: str) -> None:
    """Close an interrupted attempt's run as KILLED, when it is still RUNNING and one of this project's
    own attempts: the same experiment, project root and user. Any other run is left alone (a file or
    checkpoint copied from elsewhere can name a teammate's run)."""
    run = tracker.get_run(run_id)
    if run is None or run.info.status != "RUNNING":
        return
    tags = run.data.tags
    if (run.info.experiment_id, tags.get(TAG_PROJECT), tags.get(TAG_USER)) != (tracker.store.experiment_id, str(project_root()), _user()):
        log.warning("run %s is still RUNNING but is not an attempt of this project's (experiment %s, project %s, user %s): "
                    "left as it is", run_id, run.info.experiment_id, tags.get(TAG_PROJECT), tags.get(TAG_USER))
        return
    tracker.mark(run_id, "KILLED")


def _user() -> str | None:
    """The user MLflow records as mlflow.user for the runs this process starts."""
    try:
        return getpass.getuser()
    except Exception:
        return None


def evaluate_run(tracker: Tracker, params: Params, generator: str | Path, report: Any,
                 artifacts: list[str | Path | None]) -> dict[str, str | None]:
    """The evaluate stage's run. The run that trained the model is the FINISHED run tagged with the
    sha256 of `generator` (this clone's own first). The scores go into it only when they are
    that run's own evaluation: its project (clone), its own sample/evaluate params, the protocol it was
    scored under if it was. Else (another experiment's params, another clone, another protocol, a run
    this store lacks) into a new run, nested under the training run when the store has it, named and
    described (see _scores_run). With the scores: the sample/evaluate params, `artifacts` (those that
    exist), stage_inputs.json (the md5 of each of the stage's deps as it saw them; dvc.lock goes to
    before_this_stage/: DVC writes this stage's part after it), the protocol and digests as tags, the
    per-class table. Only the own evaluation tags the model version and may promote it (at equal
    protocol). `report`: an evaluation.Report. Returns the run ids, for `dvc exp show`."""
    results, per_class = report.results, report.per_class
    train_run = None
    if tracker.enabled:
        tracker.replay_spools()  # first: a training run spooled while its store was down gets its tags (and end) now
        gen_sha = metrics.file_sha256(generator)
        run = tracker.find_run(TAG_GENERATOR, gen_sha)
        train_run = run.info.run_id if run else None
        scores = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        fid_key = metrics.primary_fid_key(scores)
        own = _open_scores_run(tracker, run, params, report, gen_sha)
        tracker.log_params(_eval_params(params))
        tracker.log_metrics(scores)
        for path in artifacts:
            if path and Path(path).is_file():
                tracker.log_artifact(path)
        if Path(DVC_YAML).is_file():  # the hashes this stage saw (a dvc.lock logged now is one stage stale)
            tracker.log_dict(stage_inputs("evaluate", DVC_YAML), "stage_inputs.json")
        if Path(DVC_LOCK).is_file():
            tracker.log_artifact(DVC_LOCK, "before_this_stage")
        if own:
            status = promote(tracker, train_run, scores, fid_key, results[metrics.KEY_PROTOCOL], metrics.KEY_N_SAMPLES)
            if status:
                log.info("registered generator of run %s: %s", train_run, status)
        else:
            log.info("scores logged to run %s (not the training run's own evaluation): its model version's tags are "
                     "left as they are", tracker.run_id)
        tracker.set_tags({f"protocol.{k}": str(v) for k, v in report.protocol.items()}
                         | {TAG_PROTOCOL: results[metrics.KEY_PROTOCOL]}
                         | {k: v for k, v in _digests(report).items() if k == TAG_EVAL_DATA})  # the evaluator's: set at start
        tracker.log_table(per_class, "per_class.json")
        tracker.end()
    return {"mlflow_run_id": tracker.run_id, "mlflow_train_run_id": train_run}


def _eval_params(params: Params) -> dict[str, Any]:
    return {k: v for k, v in flatten(params).items() if k.split(".")[0] in ("sample", "evaluate")}


def _digests(report: Any) -> dict[str, str]:
    """The data and evaluator digests the evaluation saw (from its protocol; sha256 prefixes)."""
    proto = report.protocol
    weights = [str(v) for k, v in sorted(proto.items()) if k.endswith("_weights_sha256")]
    tags = {TAG_EVAL_DATA: str(proto["data_sha256"])} if "data_sha256" in proto else {}
    return tags | ({TAG_EVALUATOR: weights[0]} if weights else {})


def _open_scores_run(tracker: Tracker, run: Any, params: Params, report: Any, gen_sha: str) -> bool:
    """Open the run the scores go into; True when it is the training run `run` itself (its own evaluation)."""
    train_run = run.info.run_id if run else None
    changed = _changed(run, _eval_params(params))
    why = _why_not_own(run, changed, report, gen_sha, params.sample.checkpoint)
    if why is None:
        tracker.start(run_id=train_run)
        return True
    if run is None:
        log.warning("no finished run of %s trained this generator (sha256 %s): logging to a new run", tracker.uri, gen_sha[:12])
    name, tags = _scores_run(train_run, run, changed, report, gen_sha, why)
    tracker.start(name=name, tags=tags)
    return False


def _changed(run: Any, mine: dict[str, Any]) -> dict[str, Any]:
    """The sample/evaluate params that differ from those the training run logged."""
    return {k: v for k, v in mine.items() if run and run.data.params.get(k) != str(v)}


def _why_not_own(run: Any, changed: dict[str, Any], report: Any, gen_sha: str, sampled: str) -> str | None:
    """Why these scores are not the training run's own evaluation (None when they are): no such run in
    this store, samples of the best generator (the run registered the last), another clone's run, other
    sample/evaluate params, or another protocol than it was scored under."""
    if run is None:
        return f"no finished training run of this generator (sha256 {gen_sha[:12]}) is in this store"
    if sampled == "best":
        return "the samples came from the best generator (sample.checkpoint: best), and the run registered the last one"
    if run.data.tags.get(TAG_PROJECT) != str(project_root()):
        return f"the training run belongs to another clone ({run.data.tags.get(TAG_PROJECT, 'unknown')})"
    if changed:
        return "its sample/evaluate params differ from the training run's: " + "; ".join(
            f"{k}: {run.data.params.get(k)} -> {v}" for k, v in changed.items())
    if run.data.tags.get(TAG_PROTOCOL) not in (None, report.results[metrics.KEY_PROTOCOL]):
        return (f"the evaluation protocol changed (the training run was scored under {run.data.tags.get(TAG_PROTOCOL)}): "
                "new evaluation code, evaluator or data")
    return None


def _scores_run(train_run: str | None, run: Any, changed: dict[str, Any], report: Any, gen_sha: str,
                why: str) -> tuple[str, dict[str, str]]:
    """The name and tags of an evaluation run of its own: "evaluate of <training run's name>" (or the DVC
    experiment's name), a description saying `why` it is not the training run, the training run's id, this
    project, the digests; nested under the training run when the store has it."""
    import os

    train_name = run.data.tags.get("mlflow.runName", train_run) if run else f"generator {gen_sha[:12]}"
    name = os.environ.get("DVC_EXP_NAME") or f"evaluate of {train_name}" + (
        " · " + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in changed.items()) if changed else "")
    trained = f"trained in run `{train_name}` ({train_run})" if run else f"with sha256 {gen_sha}"
    note = (f"Evaluation of the generator {trained}, in project {project_root()}. "
            f"A run of its own because {why}. The model version's scores stay those of the training run's own evaluation.")
    tags = {TAG_NOTE: note, TAG_PROJECT: str(project_root()), **_digests(report)}
    if run is not None:
        tags |= {TAG_TRAIN_RUN: train_run, TAG_PARENT: train_run}
    return name[:120], tags
