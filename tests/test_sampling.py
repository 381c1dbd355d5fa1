import torch

from ganflow.nets import NetConfig, build
from ganflow.sampling import BLOCK, generate, read_samples, write_samples


def make_G(arch="dcgan"):
    torch.manual_seed(0)
    G, _ = build(arch, NetConfig(28, 1, z_dim=16, width=8))
    return G.eval()


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
    back = read_samples(tmp_path / "a")
    assert back.shape == (150, 1, 28, 28)
    assert torch.equal(torch.from_numpy(back), generate(G, 3, 0, 150))
