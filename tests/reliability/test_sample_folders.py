"""Samples folders as `ganflow evaluate` and the evaluate stage read them (issue 20: S2, C5, H1, skipped
files): in-process, through PngFolder, the one reader both use."""

import logging
import os
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ganflow import GanflowError
from ganflow.sampling import PngFolder

SHAPE = (1, 28, 28)


def digits(folder, images, mode_of=lambda x: Image.fromarray(x[0])):
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        mode_of(x).save(folder / f"{i:06d}.png")
    return folder


def palette(x):
    """A P-mode PNG that looks exactly like the digit, with index k meaning grey 255 - k."""
    im = Image.fromarray(255 - x[0], mode="L").convert("P")
    im.putpalette([v for k in range(256) for v in (255 - k,) * 3])
    return im


@pytest.mark.parametrize("mode_of", [
    palette,
    lambda x: Image.fromarray(x[0]).convert("LA"),
    lambda x: Image.fromarray(x[0]).convert("RGBA"),
    lambda x: Image.fromarray(x[0]).convert("RGB"),
], ids=["P", "LA", "RGBA", "RGB"])
def test_every_mode_is_scored_by_its_pixels(tmp_path, mnist, mode_of):
    """S2: a palette PNG was scored by its index values (FID 60.3 instead of 22.8); LA/RGBA were refused."""
    images = mnist.images[:16]
    folder = digits(tmp_path / "s", images, mode_of)
    back = torch.stack(list(PngFolder(folder, SHAPE)))
    assert torch.equal(back, torch.from_numpy(images))


def bomb_png(side: int) -> bytes:
    """A PNG header of side×side grey pixels (a few bytes; PIL refuses it by size when opening)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [14_000, 10_000])  # over PIL's error limit; over its warning limit
def test_a_decompression_bomb_in_samples_is_one_line(tmp_path, mnist, side):
    """C5: a bomb gave a traceback (prepare already refused it in one line)."""
    folder = digits(tmp_path / "s", mnist.images[:8])
    (folder / "000003.png").write_bytes(bomb_png(side))
    with pytest.raises(GanflowError) as err:
        list(PngFolder(folder, SHAPE))
    assert str(err.value).startswith(f"{folder / '000003.png'}: ") and "\n" not in str(err.value)


def test_a_fifo_named_png_is_skipped_not_read(tmp_path, mnist, caplog):
    """H1: a FIFO named *.png blocked evaluate forever: only regular files are read."""
    folder = digits(tmp_path / "s", mnist.images[:8])
    os.mkfifo(folder / "000099.png")
    out = []
    reader = threading.Thread(target=lambda: out.append(len(list(PngFolder(folder, SHAPE)))), daemon=True)
    with caplog.at_level(logging.WARNING):
        reader.start()
        reader.join(60)  # a generous bound: on main the read never returns
    assert not reader.is_alive() and out == [8]
    assert "skipped 1 entry that is not a regular PNG file (000099.png)" in caplog.text


def test_upper_case_png_is_read_and_other_files_are_counted(tmp_path, mnist, caplog):
    """Files were skipped without a word: *.PNG is read; .jpg / .txt are skipped and counted."""
    folder = digits(tmp_path / "s", mnist.images[:8])
    Image.fromarray(mnist.images[8][0]).save(folder / "000008.PNG")
    Image.fromarray(mnist.images[9][0]).save(folder / "000009.jpg")
    (folder / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        samples = PngFolder(folder, SHAPE)
    assert len(samples) == 9 and torch.equal(samples[8], torch.from_numpy(mnist.images[8]))
    assert "skipped 2 entries that are not a regular PNG file (000009.jpg, notes.txt)" in caplog.text


def test_a_sample_of_another_size_is_refused_before_decoding(tmp_path, mnist):
    folder = digits(tmp_path / "s", mnist.images[:8])
    Image.new("L", (32, 32)).save(folder / "000005.png")
    with pytest.raises(GanflowError, match=r"000005.png: 32×32 pixels, expected 28×28"):
        list(PngFolder(folder, SHAPE))
    assert np.asarray(PngFolder(folder)[0]).shape == SHAPE  # no shape given: the first file's
