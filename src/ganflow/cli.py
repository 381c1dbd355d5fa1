"""The `ganflow` console script: the commands a user reaches for besides `dvc repro`.

  ganflow check [params.yaml]                 validate params without running anything
  ganflow runs [--params params.yaml]         experiments in MLflow: run id, name, DVC experiment, version, params, scores
  ganflow sample --model URI -n 64 --out F    a grid from a registered model or a generator file
  ganflow champion [--apply]                  the champion re-decided across all versions at equal protocol
  ganflow ui [--port 5000]                    the MLflow UI on 127.0.0.1, opened in its model-training layout
  ganflow deps stages/train.py ...            each stage's library files, as closures/<stage>.txt hashes them
  ganflow evaluate --samples DIR              score any folder of PNGs with the evaluate stage's protocol
  ganflow compare A.json B.json               two eval.json side by side; refused when their protocols differ
  ganflow launch [--params params.yaml]       this host joins a multi-node train stage (nodes.*; docs/scale.md)
  ganflow --version
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from ganflow import GanflowError, __version__

RUN_PARAMS = ("train.arch", "train.loss", "train.steps", "train.lr_g", "train.lr_d", "sample.n")
RUN_SCORES = ("fid", "is", "precision", "recall")  # each in every feature space some listed run was scored in
RUN_SPACES = ("classifier", "simclr", "inception")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="ganflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"ganflow {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="validate params.yaml (as every stage does before any work)")
    check.add_argument("params", nargs="?", default="params.yaml")
    runs = sub.add_parser("runs", help="list the MLflow runs of the experiment: id, name, DVC experiment, model version, key params, scores")
    runs.add_argument("--params", default="params.yaml", help="where tracking.* is read (store, experiment)")
    runs.add_argument("--limit", type=int, default=20, help="the most recent runs listed (default 20)")
    sample = sub.add_parser("sample", help="draw a grid of samples from a registered model or a generator file")
    sample.add_argument("--model", required=True, help="models:/ganflow-generator@champion, runs:/ID/generator, or models/generator.pt")
    sample.add_argument("-n", type=int, default=64, help="images (1 to 1024)")
    sample.add_argument("--seed", type=int, default=1, help="image i depends on (seed, i) only")
    sample.add_argument("--out", type=Path, default=Path("grid.png"),
                        help="the PNG written: a full, square-ish grid (64 -> 8 × 8) (default grid.png)")
    sample.add_argument("--params", default="params.yaml", help="where tracking.* is read for models:/ URIs")
    champ = sub.add_parser("champion", help="re-decide the champion across all model versions at equal protocol "
                           "(a dry run that prints the table; --apply moves the alias)")
    champ.add_argument("--params", default="params.yaml", help="where tracking.* is read (store, registered model)")
    champ.add_argument("--protocol", help="the protocol hash compared under (default: the newest scored version's)")
    champ.add_argument("--apply", action="store_true", help="move the champion alias (default: only print)")
    ui = sub.add_parser("ui", help="serve the MLflow UI of the project's store on 127.0.0.1 and print the experiment's link")
    ui.add_argument("--params", default="params.yaml")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--print-url", action="store_true", help="only print the link")
    dep = sub.add_parser("deps", help="print the ganflow files each stage script imports (what closures/<stage>.txt hashes)")
    dep.add_argument("scripts", nargs="+")
    ev = sub.add_parser("evaluate", help="score a folder of PNGs against the prepared data (outside DVC too)")
    ev.add_argument("--samples", required=True, help="folder of PNGs, the prepared data's size")
    ev.add_argument("--prepared", default="data/prepared")
    ev.add_argument("--evaluator", default="models/evaluator.pt")
    ev.add_argument("--params", default="params.yaml", help="its evaluate section is used (defaults when missing)")
    ev.add_argument("--seed", type=int, default=None, help="the seed the samples were drawn with, for the protocol")
    ev.add_argument("--out", help="write the results here (JSON) instead of printing them")
    cmp = sub.add_parser("compare", help="compare two eval.json files made under the same protocol")
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.add_argument("--force", action="store_true", help="print the comparison even when the protocols differ")
    launch = sub.add_parser("launch", help="run the train stage on this host as one of nodes.count hosts (docs/scale.md)")
    launch.add_argument("--params", default="params.yaml", help="the same file on every host (nodes.rendezvous names node 0)")
    a = ap.parse_args(argv)
    commands: dict[str, Callable] = {"check": check_params, "runs": list_runs, "sample": sample_grid, "deps": print_deps, "ui": serve_ui, "champion": champion,
                                     "evaluate": evaluate_folder, "compare": compare, "launch": launch_train}
    try:
        commands[a.cmd](a)
    except GanflowError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # `ganflow runs | head`: the reader left; stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush of stdout cannot fail again
        sys.exit(141)


def check_params(a) -> None:
    from ganflow.config import load_params

    load_params(a.params)
    print(f"{a.params}: ok")


def _tracking(params_path: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from ganflow.config import load_params
    from ganflow.tracking import resolve_uri

    cfg = load_params(params_path).tracking
    return cfg, resolve_uri(cfg)


def list_runs(a) -> None:
    from ganflow.config import load_params
    from ganflow.tracking import store

    cfg = load_params(a.params).tracking
    uri, runs = store.search_runs(cfg, a.limit)
    if not runs:
        print(f"no runs in experiment {cfg.experiment!r} at {uri}")
        return
    from ganflow.tracking import registry
    from ganflow.tracking.names import TAG_DVC_EXP, TAG_TRAIN_RUN

    versions = registry.version_labels(store.read_client(cfg)[1], cfg.registered_model)

    def version(r) -> str:  # an evaluation run: the version of the model it scored
        own, trained = versions.get(r.info.run_id), versions.get(r.data.tags.get(TAG_TRAIN_RUN, ""))
        return own or (f"(of {trained.split()[0]})" if trained else "")

    logged = {m for r in runs for m in r.data.metrics}
    scores = [m for m in (f"{s}_{space}" for space in RUN_SPACES for s in RUN_SCORES) if m in logged] + ["n_samples"]
    head = ["run id", "name", "dvc exp", "version", "status", *(p.split(".")[1] for p in RUN_PARAMS), *scores]
    rows = [[r.info.run_id[:12], (r.info.run_name or "")[:40], r.data.tags.get(TAG_DVC_EXP, "-"), version(r) or "-", r.info.status,
             *(r.data.params.get(p, "") for p in RUN_PARAMS),
             *(f"{r.data.metrics[m]:.4g}" if m in r.data.metrics else "" for m in scores)] for r in runs]
    _table(head, rows)


def _table(head: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def champion(a) -> None:
    from ganflow.config import load_params
    from ganflow.tracking import registry, store

    cfg = load_params(a.params).tracking
    if not cfg.registered_model:
        raise GanflowError("tracking.registered_model: not set, there is no registry to decide in")
    uri, client = store.read_client(cfg)
    try:
        rows = registry.standings(client, cfg.registered_model)
    except Exception as err:
        raise GanflowError(f"tracking store {uri}: cannot read model {cfg.registered_model!r} ({type(err).__name__})") from None
    metric = next((r.metric for r in rows if r.metric), "fid")
    _table(["version", "run", "protocol", "n", metric, "alias"],
           [[r.version, r.run_id[:12], r.protocol[:12] or "-", r.n or "-", "-" if r.score is None else f"{r.score:.5g}",
             r.alias] for r in rows])
    winner = registry.best(rows, a.protocol)
    if winner is None:
        print(f"no version scored under protocol {a.protocol or '(none)'}: the alias stays where it is")
    elif not a.apply:
        print(f"dry run: the champion at protocol {winner.protocol[:12]} is version {winner.version}; --apply moves the alias")
    else:
        registry.crown(client, cfg.registered_model, winner, rows)
        print(f"champion: version {winner.version} (run {winner.run_id[:12]}, {winner.metric} {winner.score:.5g})")


def sample_grid(a) -> None:
    """Samples of a generator as one PNG grid; image i depends on (seed, i) only, as in the sample stage."""
    import torch

    from ganflow.io import save_grid
    from ganflow.pixels import to_uint8
    from ganflow.sampling import drawn_classes, grid_columns, latents

    if not 1 <= a.n <= 1024:
        raise GanflowError(f"-n must be between 1 and 1024, got {a.n}")
    if a.model.startswith(("models:/", "runs:/")):
        import mlflow

        from ganflow.generator import checked_shares, load_registered

        _, uri = _tracking(a.params)
        mlflow.set_tracking_uri(uri)
        model, meta = load_registered(a.model)
        try:  # metadata a person may have edited: one line, not a traceback
            z_dim, n_classes = int(meta.get("z_dim", 0)), int(meta.get("n_classes", 0))
            shares = checked_shares(meta.get("class_shares"), n_classes) if n_classes else None
        except (TypeError, ValueError) as err:
            raise GanflowError(f"--model {a.model}: unusable metadata ({err})") from None
        if not z_dim:
            raise GanflowError(f"--model {a.model}: no z_dim in its metadata (not logged by ganflow?)")
        z = latents(a.seed, 0, a.n, z_dim)
        if n_classes:  # image i draws class i % n_classes, or a self-conditioned G's cluster in their shares
            z = torch.cat([z, drawn_classes(n_classes, shares, None, 0, a.n, a.seed).float()[:, None]], 1)
        try:
            with torch.no_grad():
                images = to_uint8(model(z))
        except Exception as err:  # an exported graph that does not take ganflow's input
            raise GanflowError(f"--model {a.model}: does not map {tuple(z.shape)} latents to images ({type(err).__name__})") from None
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise GanflowError(f"--model {a.model}: gave {tuple(images.shape)}, not N×C×H×W images")
    else:  # a file: only ever a ganflow generator file, loaded with weights_only=True
        from ganflow.generator import load_generator
        from ganflow.sampling import generate

        G, _ = load_generator(a.model)
        images = generate(G, a.seed, 0, a.n)
    save_grid(images, a.out, nrow=grid_columns(a.n))
    print(f"wrote {a.n} samples of {a.model} to {a.out}")


def evaluate_folder(a) -> None:
    import logging

    from ganflow import metrics
    from ganflow.config import Params, load_params
    from ganflow.evaluation import evaluate_folder as evaluate
    from ganflow.io import write_json

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    params = load_params(a.params) if Path(a.params).is_file() else Params()
    report = evaluate(a.samples, a.prepared, a.evaluator, params, a.seed)
    results = report.results | {metrics.KEY_PROTOCOL_DETAIL: report.protocol}  # self-contained, for compare
    if a.out:
        write_json(a.out, results)
    else:
        print(json.dumps(results, indent=2, sort_keys=True))


def compare(a) -> None:
    from ganflow.evaluation import comparable, load_results

    results = [load_results(path) for path in (a.a, a.b)]  # each protocol hash recomputed from its detail
    diff = comparable(*results)
    if diff and not a.force:
        raise GanflowError(f"{a.a} and {a.b} were scored under different protocols ({'; '.join(diff)}): "
                           "their scores are not comparable (--force prints them anyway)")
    if diff:
        print(f"WARNING: DIFFERENT PROTOCOLS, SCORES NOT COMPARABLE: {'; '.join(diff)}", file=sys.stderr)
    ra, rb = results
    print(f"{'metric':<36} {'A':>12} {'B':>12} {'B - A':>12}")
    for k in sorted(set(ra) & set(rb)):
        if isinstance(ra[k], (int, float)) and isinstance(rb[k], (int, float)):
            print(f"{k:<36} {ra[k]:>12.5g} {rb[k]:>12.5g} {rb[k] - ra[k]:>+12.4g}")


def serve_ui(a) -> None:
    """The UI opens in its GenAI layout unless the link asks for the model-training one (MLflow 3 keeps that
    choice per browser): print such a link, then serve the local store (a server's URL is only printed)."""
    import urllib.parse

    from ganflow.config import load_params
    from ganflow.tracking import store

    cfg = load_params(a.params).tracking
    uri, exp_id = store.find_experiment(cfg)
    remote = store.is_remote(uri)
    base = uri.rstrip("/") if remote else f"http://127.0.0.1:{a.port}"
    where = f"/#/experiments/{exp_id}/runs" if exp_id else "/#/experiments"
    print(f"{base}{where}?workflowType=machine_learning", flush=True)
    if cfg.registered_model:  # the registry page, in the same layout
        print(f"{base}/#/models/{urllib.parse.quote(cfg.registered_model)}?workflowType=machine_learning", flush=True)
    if a.print_url or remote:
        return
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(a.port)])


def launch_train(a) -> None:
    """dvc.yaml's train command, run here: with nodes.count > 1 it meets the other hosts at nodes.rendezvous
    (node 0 runs `dvc repro`, or `ganflow launch` too and `dvc commit train` after); exits with its status."""
    import shlex
    import subprocess

    import yaml

    from ganflow.config import load_params

    params = load_params(a.params)
    try:
        cmd = shlex.split(yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["train"]["cmd"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise GanflowError(f"dvc.yaml: no train stage command here ({type(err).__name__}): run it in the project root") from None
    if cmd[0] == "python":
        cmd[0] = sys.executable
    if a.params != "params.yaml":
        cmd[2:2] = ["--params", a.params]
    print(f"launching the train stage on this host: {params.nodes.count} host(s) × {params.train.devices} process(es)"
          + (f", rendezvous {params.nodes.rendezvous}" if params.nodes.count > 1 else ""), file=sys.stderr, flush=True)
    sys.exit(subprocess.call(cmd))


def print_deps(a) -> None:
    from ganflow.deps import closure

    for script in a.scripts:
        print(f"{script}:")
        for path in closure(script):
            try:
                print(f"  - {path.relative_to(Path.cwd().resolve()).as_posix()}")
            except ValueError:
                print(f"  - {path}")


if __name__ == "__main__":
    main()
