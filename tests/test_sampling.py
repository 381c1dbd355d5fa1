import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, peak_rss
from ganflow.checkpoint import GENERATOR_FORMAT
from ganflow.nets import NetConfig, build
from ganflow.sampling import BLOCK, PngFolder, generate, write_samples


def make_G(arch="dcgan"):
    torch.manual_seed(0)
    G, _ = build(arch, NetConfig(28, 1, z_dim=16, width=8))
    return G.eval()


@pytest.mark.stage  # 400 generator calls; the batch-size test below is the quick tier's
def test_image_i_depends_only_on_seed_and_i():
    for arch in ("dcgan", "seed"):
        G = make_G(arch)
        all_at_once = generate(G, 7, 0, 200)
        one_by_one = torch.cat([generate(G, 7, i, i + 1) for i in range(200)])
        odd_batches = torch.cat([generate(G, 7, s, min(200, s + 37)) for s in range(0, 200, 37)])
        assert torch.equal(all_at_once, one_by_one) and torch.equal(all_at_once, odd_batches)
        assert not torch.equal(all_at_once, generate(G, 8, 0, 200))


def test_written_pngs_are_identical_whatever_the_batch_size(tmp_path):
    G = make_G()
    write_samples(G, tmp_path / "a", n=150, seed=3, batch_size=BLOCK)
    write_samples(G, tmp_path / "b", n=150, seed=3, batch_size=1000)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"{i:06d}.png" for i in range(150)] == sorted(p.name for p in (tmp_path / "b").iterdir())
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    back = PngFolder(tmp_path / "a")
    assert len(back) == 150 and back[0].shape == (1, 28, 28)
    assert torch.equal(torch.stack([back[i] for i in range(150)]), generate(G, 3, 0, 150))


def test_conditional_labels_follow_sample_classes():
    from ganflow import GanflowError
    from ganflow.sampling import labels

    torch.manual_seed(0)
    G, _ = build("dcgan", NetConfig(28, 1, z_dim=16, width=8, n_classes=10))
    assert labels(G, [3, 7], 0, 5).tolist() == [3, 7, 3, 7, 3]
    assert labels(G, None, 8, 12).tolist() == [8, 9, 0, 1]
    seen = []
    G.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    generate(G.eval(), 0, 0, 6, classes=[3, 7])
    assert seen[0][:6].tolist() == [3, 7, 3, 7, 3, 7]  # the generator is asked for exactly these classes
    with pytest.raises(GanflowError, match="not class-conditional"):
        labels(make_G(), [1], 0, 2)


@pytest.mark.slow
@pytest.mark.stage
def test_50k_samples_stream_with_bounded_memory(tmp_path):
    G = make_G()
    torch.save({"format": GENERATOR_FORMAT, "arch": "dcgan", "net": G.cfg.to_dict(), "state_dict": G.state_dict(), "step": 0},
               tmp_path / "g.pt")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sample"].update({"n": 50_000, "batch_size": 1024})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = subprocess.Popen([sys.executable, str(ROOT / "stages/sample.py"), "--params", str(tmp_path / "params.yaml"),
                          str(tmp_path / "g.pt"), str(tmp_path / "g.pt"), str(tmp_path / "samples"), str(tmp_path / "grid.png")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = peak_rss(p)
    assert p.returncode == 0
    assert "s per 1,000 images" in p.stdout.read()
    assert len(list((tmp_path / "samples").iterdir())) == 50_000
    assert 0 < peak < 2 * 2**30, f"peak RSS {peak / 2**20:.0f} MiB"


def test_grid_columns_make_full_square_ish_grids():
    from ganflow.sampling import grid_columns

    assert [grid_columns(n) for n in (1, 7, 12, 20, 60, 64, 100, 1024)] == [1, 7, 4, 5, 10, 8, 10, 32]
    for n in range(1, 200):
        c = grid_columns(n)
        assert n % c == 0 and c * c >= n  # full rows, at least as wide as tall
