"""Classical codecs (cbexp.evaluation.classical, cbexp classical): one JPEG point against an
independent computation on a Kodak image, every Pillow codec on a small crop, the cache, the
grids, and external coders: skipped with a note when absent, run through their CLI when present
(a stand-in bpgenc/bpgdec that copy the PNG)."""

import io
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbexp.evaluation import classical

PILLOW_CODECS = ["jpeg", "webp", "avif", "jpeg2000", "jpegxl"]


@pytest.fixture(scope="module")
def crops(kodak_dir, tmp_path_factory):
  """Two 192x192 Kodak crops (MS-SSIM needs 161 pixels a side): fast, and real photographs."""
  folder = tmp_path_factory.mktemp("crops")
  for name in ("kodim13.png", "kodim23.png"):
    with Image.open(kodak_dir / name) as image:
      image.convert("RGB").crop((256, 128, 448, 320)).save(folder / name)
  return folder


def test_a_jpeg_point_equals_an_independent_computation(kodak_dir):
  path = kodak_dir / "kodim13.png"
  original = np.asarray(Image.open(path).convert("RGB"))
  buffer = io.BytesIO()
  Image.fromarray(original).save(
    buffer, format="JPEG", quality=40, subsampling="4:2:0", optimize=True
  )
  data = buffer.getvalue()
  decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
  mse = np.mean((decoded - original.astype(np.float64)) ** 2)  # over all RGB values
  psnr = 10 * np.log10(255.0**2 / mse)

  row = classical.evaluate([path], [classical.CODECS["jpeg"]], {"jpeg": [40]}).iloc[0]
  assert row["image"] == "kodim13.png" and row["quality"] == 40
  assert row["bytes"] == len(data)
  assert row["bpp"] == 8 * len(data) / (original.shape[0] * original.shape[1])
  assert abs(row["psnr"] - psnr) < 1e-4
  assert 0.9 < row["ms_ssim"] < 1 and row["ms_ssim_db"] == pytest.approx(
    -10 * np.log10(1 - row["ms_ssim"])
  )


@pytest.mark.parametrize("name", PILLOW_CODECS)
def test_every_pillow_codec_gives_a_curve_that_rises_with_rate(name, crops):
  codec = classical.CODECS[name]
  if codec.missing():
    pytest.skip(f"{name}: {codec.missing()}")
  grid = classical.grids([name])[name]
  values = [grid[1], grid[-2]]
  paths = sorted(str(p) for p in crops.iterdir())
  per_image = classical.evaluate(paths, [codec], {name: values})
  assert len(per_image) == 4 and set(per_image["encoder"]) == {
    f"{codec.settings}; {codec.library()}"
  }
  summary = classical.per_quality(per_image)
  assert list(summary["num_images"]) == [2, 2] and list(summary["label"]) == [codec.label] * 2
  low, high = summary.sort_values("bpp").to_dict("records")
  assert 0 < low["bpp"] < high["bpp"] and 20 < low["psnr"] < high["psnr"]
  assert low["ms_ssim"] < high["ms_ssim"]


def test_jpeg2000_meets_its_target_rate(crops):
  per_image = classical.evaluate(
    [crops / "kodim23.png"], [classical.CODECS["jpeg2000"]], {"jpeg2000": [0.5, 1.0]}
  )
  assert list(per_image["bpp"]) == pytest.approx([0.5, 1.0], rel=0.1)


def test_rows_are_cached_by_codec_value_image_content_and_encoder(crops, tmp_path):
  jpeg = classical.CODECS["jpeg"]
  paths = [crops / "kodim13.png"]
  done = []
  first = classical.evaluate(paths, [jpeg], {"jpeg": [20]})
  first.to_csv(tmp_path / "cache.csv", index=False)
  cached = classical.read_per_image(tmp_path / "cache.csv")
  again = classical.evaluate(
    paths, [jpeg], {"jpeg": [20, 60]}, cached, lambda c, *n: done.append(n)
  )
  assert done == [(1, 1)]  # 60 coded, 20 reused
  pd.testing.assert_frame_equal(again.iloc[:1], first, check_dtype=False)
  edited = cached.assign(encoder="another libjpeg")  # other settings or versions: coded again
  classical.evaluate(paths, [jpeg], {"jpeg": [20]}, edited, lambda c, *n: done.append(n))
  assert done[-1] == (1, 0) and classical.read_per_image(tmp_path / "absent.csv") is None


def test_unknown_codecs_and_grid_values_are_one_line_errors():
  with pytest.raises(classical.ClassicalError, match=r"unknown classical codec\(s\) \['jpg'\]"):
    classical.select(["jpeg", "jpg"])
  with pytest.raises(classical.ClassicalError, match=r"jpeg: grid value\(s\) \[0, 101\] outside"):
    classical.check_grid(classical.CODECS["jpeg"], [0, 50, 101])
  with pytest.raises(classical.ClassicalError, match="bpg: empty quality grid"):
    classical.check_grid(classical.CODECS["bpg"], [])


def test_the_default_grids_and_an_evaluation_set_by_name(kodak_dir, monkeypatch):
  grids = classical.grids(["jpeg", "jpeg2000", "bpg"], {"jpeg": [10, 90], "bpg": None})
  assert grids["jpeg"] == [10, 90] and grids["jpeg2000"][0] == 0.1 and len(grids["bpg"]) > 4
  monkeypatch.setenv("CBEXP_KODAK_DIR", str(kodak_dir))
  paths = classical.image_paths("kodak_test", max_images=3)
  assert [os.path.basename(p) for p in paths] == ["kodim13.png", "kodim14.png", "kodim15.png"]


def test_a_missing_external_binary_is_skipped_with_a_note(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))  # no bpgenc, no EncoderApp
  usable, notes = classical.select(["jpeg", "bpg", "vtm"])
  assert [c.name for c in usable] == ["jpeg"]
  assert notes == [
    "bpg: bpgenc, bpgdec not on PATH: skipped",
    "vtm: EncoderApp, DecoderApp not on PATH: skipped",
  ]


def stand_in(folder, name, log):
  """An executable ``name`` that logs its arguments and copies its input (last) to ``-o``."""
  path = folder / name
  path.write_text(f'#!/bin/sh\necho "$*" >> {log}\neval last=\\${{$#}}\ncp "$last" "$2"\n')
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_bpg_runs_through_its_command_line(crops, tmp_path, monkeypatch):
  log = tmp_path / "calls.log"
  for name in ("bpgenc", "bpgdec"):
    stand_in(tmp_path, name, log)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  usable, notes = classical.select(["bpg"])
  assert notes == []
  row = classical.evaluate([crops / "kodim13.png"], usable, {"bpg": [31]}).iloc[0]
  calls = log.read_text().splitlines()
  assert calls[0].startswith("-o ") and " -q 31 -f 444 -b 8 " in calls[0]
  assert calls[1].startswith("-o ") and calls[1].endswith("in.bpg")
  assert row["psnr"] == np.inf  # the stand-in is lossless: the PNG went through unchanged
  assert row["bytes"] > 0 and "bpgenc -q QP -f 444" in row["encoder"]


def test_a_codec_that_fails_is_a_note_and_the_others_go_on(crops, tmp_path, monkeypatch):
  from omegaconf import OmegaConf

  from cbexp.analysis.classical import measure

  for name in ("bpgenc", "bpgdec"):
    (tmp_path / name).write_text("#!/bin/sh\necho boom >&2\nexit 1\n")
    (tmp_path / name).chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  settings = OmegaConf.create({"codecs": ["bpg", "jpeg"], "qualities": {"jpeg": [50]}})
  per_image, summary, notes = measure(settings, [crops / "kodim13.png"], tmp_path, "cache.csv")
  assert notes == ["bpg at 22 failed on kodim13.png: bpgenc exited with status 1: boom: skipped"]
  assert list(per_image["codec"]) == ["jpeg"] and list(summary["quality"]) == [50]
  assert len(pd.read_csv(tmp_path / "cache.csv")) == 1


def test_the_command_writes_its_tables_and_notes_what_it_skipped(crops, tmp_path):
  env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no bpgenc here
  out = tmp_path / "out"
  result = subprocess.run(
    [sys.executable, "-m", "cbexp.classical", f"images={crops}", "codecs=jpeg,bpg"]
    + ["qualities.jpeg=[20,60]", f"out={out}"],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "note: bpg: bpgenc, bpgdec not on PATH: skipped" in result.stdout
  assert len(pd.read_csv(out / "per_image.csv")) == 4
  assert list(pd.read_csv(out / "per_quality.csv")["quality"]) == [20, 60]
  document = json.loads((out / "compressai" / "jpeg.json").read_text())
  assert document["meta"]["quality"] == [20, 60] and len(document["results"]["psnr-rgb"]) == 2
  assert sorted(p.name for p in (out / "compressai").iterdir()) == ["jpeg.json"]


def test_bad_command_arguments_are_one_line(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "cbexp.classical", f"images={tmp_path}", "qualities.jpg=[1]"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2
  assert result.stderr.strip() == (
    "cbexp classical: error: qualities.jpg: no such codec; known: jpeg, webp, avif, jpeg2000, "
    "jpegxl, bpg"
  )
