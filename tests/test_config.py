import pytest
import yaml

from conftest import ROOT, run_stage
from ganflow.config import ConfigError, Params, flatten, load_params, parse_params


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
        ({"prepare": {"resolution": 30}}, "params.yaml: prepare.resolution must be 28, 32 or 64 (got 30)"),
        ({"prepare": {"source": "folder"}}, "params.yaml: prepare.folder must name an image folder"),
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


def test_a_bad_param_stops_a_stage_before_any_work_and_leaves_outputs_alone(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["lr_d"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    names = ("generator.pt", "generator_best.pt", "checkpoint.pt", "run.json", "log.tsv", "fid.tsv", "grid.png")
    outs = [tmp_path / n for n in names]
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
    f.write_text("evaluate:\n  inception: off\ntracking:\n  enabled: false\n")
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
