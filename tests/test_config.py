import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, run_stage
from ganflow.config import ConfigError, Params, describe, flatten, load_params, parse_params
from ganflow.outputs import TRAIN_FILE_NAMES


def test_params_yaml_lists_every_key_with_the_code_defaults():
    # params.yaml is the full, commented list of knobs, and the models' defaults are the same values
    assert load_params(ROOT / "params.yaml") == Params()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    flat_keys = set()

    def walk(d, pre=""):
        for k, v in d.items():
            walk(v, f"{pre}{k}.") if isinstance(v, dict) else flat_keys.add(pre + k)

    walk(raw)
    assert flat_keys == set(flatten(Params()))


# `key: value  # comment`, indented by two spaces per level; the value may be empty (a section)
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>\w+):(?P<value>.*?)(?:\s+#\s?(?P<comment>.*))?$")


def params_yaml_comments() -> tuple[dict[str, str | None], dict[str, str | None]]:
    """params.yaml's leaf keys and section keys (flat dot keys), each with its trailing comment or None."""
    leaves, sections, path = {}, {}, []
    for n, line in enumerate((ROOT / "params.yaml").read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = KEY_LINE.match(line)
        assert m, f"params.yaml:{n}: not a `key: value  # comment` line: {line!r}"
        depth, rest = divmod(len(m["indent"]), 2)
        assert not rest and depth <= len(path), f"params.yaml:{n}: unexpected indentation"
        path = path[:depth] + [m["key"]]
        key = ".".join(path)
        (leaves if m["value"].strip() else sections)[key] = m["comment"]
    return leaves, sections


def test_every_params_yaml_comment_is_the_fields_description():
    # one text per key: config.py's Field(description=...), shown as the comment in params.yaml
    described = describe()
    assert set(described) == set(flatten(Params()))
    assert [k for k, text in described.items() if not text.strip()] == [], "keys without a description"
    leaves, sections = params_yaml_comments()
    assert set(leaves) == set(described)
    for key, comment in leaves.items():
        assert comment is not None, f"params.yaml: {key} has no comment (its description: {described[key]!r})"
        assert comment == described[key], f"params.yaml comment of {key} differs from its description in config.py"
    with_sections = describe(sections=True)
    assert set(sections) == set(with_sections) - set(described)
    for key, comment in sections.items():
        if comment is not None:  # a section comment, when there is one, is its model's docstring
            assert comment == with_sections[key], f"params.yaml comment of section {key} differs from its docstring"


@pytest.mark.stage
def test_check_imports_neither_torch_nor_a_registry():
    # config.py checks names against torch-free lists, so `ganflow check` answers without loading torch (~5 s)
    code = ("import sys; from ganflow.cli import main; main(['check', sys.argv[1]]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'mlflow') "
            "or m in ('ganflow.nets', 'ganflow.losses', 'ganflow.augment', 'ganflow.data')); "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "params.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("params.yaml: ok")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"lr_g": -0.1}}, "params.yaml: train.lr_g must be greater than 0 (got -0.1)"),
        ({"train": {"lrg": 0.1}}, "params.yaml: unknown key train.lrg (did you mean train.lr_g?)"),
        ({"trian": {}}, "params.yaml: unknown key trian (did you mean train?)"),
        ({"train": {"steps": "100"}}, "params.yaml: train.steps must be a valid integer (got '100')"),
        ({"train": {"batch_size": 0}}, "params.yaml: train.batch_size must be greater than 0 (got 0)"),
        ({"train": {"arch": "stylegan9"}}, "params.yaml: train.arch must be one of"),
        ({"train": {"loss": "l2"}}, "params.yaml: train.loss must be one of"),
        ({"train": {"augment": ["flip"]}}, "params.yaml: train.augment has unknown policy 'flip'"),
        ({"train": {"betas": [0.5]}}, "params.yaml: train.betas"),
        ({"prepare": {"resolution": 30}}, "params.yaml: prepare.resolution must be 28, 32, 64 or 128 (got 30)"),
        ({"prepare": {"source": "folder", "folder": ""}}, "params.yaml: prepare.folder string should have at least 1 character"),
        ({"seed": 2**64}, "params.yaml: seed must be less than 4294967296"),  # k-means and torch take 32/64-bit seeds
        ({"tracking": {"registered_model": ""}}, "params.yaml: tracking.registered_model string should have at least 1 character"),
        ({"tracking": {"enabled": "yes"}}, "params.yaml: tracking.enabled must be a valid boolean (got 'yes')"),
        ({"evaluate": {"inception": "maybe"}}, "params.yaml: evaluate.inception must be 'auto', 'on' or 'off'"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.stage
def test_a_bad_param_stops_a_stage_before_any_work_and_leaves_outputs_alone(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["lr_d"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    outs = [tmp_path / n for n in TRAIN_FILE_NAMES]
    for o in outs:
        o.write_bytes(b"earlier output " + o.name.encode())
    r = run_stage("train", "--params", str(tmp_path / "params.yaml"), str(tmp_path / "prepared"), str(tmp_path / "evaluator.pt"), *map(str, outs))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'params.yaml'}: train.lr_d must be greater than 0 (got -1)"
    assert len(r.stderr.strip().splitlines()) == 1
    for o in outs:
        assert o.read_bytes() == b"earlier output " + o.name.encode()


def test_yaml_1_2_booleans_as_dvc_writes_them(tmp_path):
    f = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    f.write_text(text.replace("inception: auto", "inception: off").replace("enabled: true", "enabled: false"))
    p = load_params(f)
    assert p.evaluate.inception == "off" and p.tracking.enabled is False


def test_check_command(tmp_path):
    from ganflow.cli import main

    main(["check", str(ROOT / "params.yaml")])
    bad = tmp_path / "p.yaml"
    bad.write_text("seed: -3\n")
    with pytest.raises(SystemExit) as e:
        main(["check", str(bad)])
    assert e.value.code == 1


@pytest.mark.parametrize("raw, message", [
    ({"train": {"ema": 1e300}}, "params.yaml: train.ema 1e+300 (a half-life in images) must be at most 1000 × the 640,000 images trained"),
    ({"train": {"ema": 1.7e308}}, "params.yaml: train.ema 1.7e+308 (a half-life in images) must be at most 1000"),
    ({"train": {"lr_decay": 1e-17}}, "params.yaml: train.lr_decay 1e-17 decays over less than one of the 10000 steps"),
    ({"train": {"eval_samples": 1}}, "params.yaml: train.eval_samples must be greater than or equal to 64 (got 1)"),
    ({"train": {"eval_samples": 2}}, "params.yaml: train.eval_samples must be greater than or equal to 64 (got 2)"),
    ({"evaluate": {"bootstrap": 10**9}}, "params.yaml: evaluate.bootstrap must be less than or equal to 10000"),
    ({"evaluate": {"kid_subset_size": 10**12}}, "params.yaml: evaluate.kid_subset_size must be less than or equal to 10000000"),
    ({"evaluate": {"kid_subset_size": 1}}, "params.yaml: evaluate.kid_subset_size must be greater than or equal to 2"),
    ({"train": {"width": 1024}, "prepare": {"resolution": 64}},
     "params.yaml: train.width 1024 (with train.z_dim 64, dcgan at 64 px) gives a generator of 713,"),
    ({"train": {"width": 1024, "arch": "sngan"}, "prepare": {"resolution": 64}}, "params.yaml: train.width 1024 (with train.z_dim 64, sngan at 64 px)"),
])
def test_unbounded_knobs_are_refused_in_one_line(raw, message):
    """Issue 20 S5, C2, C3 and the unbounded knobs: each passed check and crashed, hung or trained a useless G."""
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


@pytest.mark.stage
def test_the_torch_free_g_size_is_the_nets_own():
    """config.g_parameters (torch-free, for `ganflow check`) against the generator built on the meta device."""
    from ganflow.config import g_parameters
    from ganflow.nets import NetConfig, parameter_count

    for arch in ("dcgan", "sngan"):
        for res in (28, 32, 64, 128):
            for channels, z_dim, width, n_classes in [(1, 64, 32, 0), (3, 100, 48, 10), (1, 7, 3, 3)]:
                net = NetConfig(res, channels, z_dim, width, n_classes=n_classes)
                assert g_parameters(arch, res, channels, z_dim, width, n_classes) == parameter_count(arch, net), (arch, res)
    assert g_parameters("seed", 28, 1, 64, 32, 0) is None


def test_the_largest_g_check_allows_is_one_sample_loads(tmp_path):
    """train.width at the bound: the generator that check lets train is one `sample` loads (no MAX_PARAMETERS refusal)."""
    from ganflow.config import MAX_G_PARAMETERS, g_parameters
    from ganflow.generator import MAX_PARAMETERS

    assert MAX_PARAMETERS == MAX_G_PARAMETERS
    widest = max(w for w in range(1, 1025) if g_parameters("dcgan", 64, 1, 64, w, 10) <= MAX_G_PARAMETERS)
    parse_params({"train": {"width": widest}, "prepare": {"resolution": 64}})
    with pytest.raises(ConfigError):
        parse_params({"train": {"width": widest + 1}, "prepare": {"resolution": 64}})
