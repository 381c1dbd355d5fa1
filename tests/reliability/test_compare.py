"""`ganflow compare` on files it must refuse (issue 20: S12, C6), in-process through ganflow.cli.main."""

import json

import pytest

from ganflow.cli import main
from ganflow.evaluation import protocol_hash

DETAIL = {"n_samples": 5000, "data_sha256": "abc", "seed": 0}


def eval_json(path, detail=DETAIL, protocol=None, fid=1.0):
    path.write_text(json.dumps({"fid_classifier": fid, "protocol_detail": detail,
                                "protocol": protocol or protocol_hash(detail)}))
    return str(path)


def refused(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["compare", *map(str, args)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_compare_recomputes_the_protocol_hash(tmp_path, capsys):
    """S12: an edited protocol_detail, or a hash copied from another file, was trusted."""
    a = eval_json(tmp_path / "a.json")
    ok = eval_json(tmp_path / "ok.json", fid=2.0)
    main(["compare", a, ok])
    assert "fid_classifier" in capsys.readouterr().out
    edited = eval_json(tmp_path / "edited.json", DETAIL | {"n_samples": 50}, protocol=protocol_hash(DETAIL))
    for args in ([a, edited], [a, edited, "--force"]):
        err = refused(capsys, *args)
        assert f"{edited}: its protocol {protocol_hash(DETAIL)!r} is not the hash of its protocol_detail" in err


def test_compare_on_files_that_are_not_eval_json_is_one_line(tmp_path, capsys):
    """C6: per_class.json (an easy slip), a list, deeply nested JSON or /dev/zero crashed or read forever."""
    a = eval_json(tmp_path / "a.json")
    (tmp_path / "per_class.json").write_text(json.dumps([{"class": 0, "fid_intra": 3.0}]))
    (tmp_path / "nested.json").write_text("[" * 200_000 + "]" * 200_000)
    (tmp_path / "obj.json").write_text(json.dumps({"fid_classifier": 1.0}))
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe{")
    cases = {"per_class.json": "holds a JSON list, not an eval.json's object", "nested.json": "not valid JSON (RecursionError)",
             "obj.json": "no protocol and protocol_detail", "bytes.json": "not valid JSON", "/dev/zero": "not a regular file"}
    for name, message in cases.items():
        path = name if name.startswith("/") else tmp_path / name
        assert f"{path}: {message}" in refused(capsys, a, path)
