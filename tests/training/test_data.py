"""Data sources behind conf/dataset and conf/eval, and the Kodak download helper."""

import functools
import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from cbexp import images
from cbexp.cli import datasets
from cbexp.training import data


def write_images(folder, sizes, suffix=".png"):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  paths = []
  for i, (height, width) in enumerate(sizes):
    path = folder / f"img{i:02d}{suffix}"
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    paths.append(str(path))
  return paths


def test_folder_and_glob(tmp_path):
  paths = write_images(tmp_path / "a", [(64, 80), (70, 64)])
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  assert images.config_image_paths("folder", tmp_path / "a") == paths
  assert images.config_image_paths("folder", f"{tmp_path}/a/*01.png") == paths[1:]


def test_folder_without_images_names_it(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(images.DataError, match="empty.*no images found"):
    images.config_image_paths("folder", tmp_path / "empty")
  with pytest.raises(images.DataError, match="dataset.path is not set"):
    images.config_image_paths("folder", None, "dataset")


def test_skimage_default_is_offline_colour_photos():
  paths = images.config_image_paths("skimage", None)
  assert len(paths) >= 5
  image = images.load_image(paths[0])
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  images.check_images(paths, 256)  # the paper's patch fits every bundled photo


def test_image_smaller_than_patch(tmp_path):
  paths = write_images(tmp_path, [(128, 128), (64, 200)])
  images.check_images(paths, 64)
  with pytest.raises(
    images.DataError, match=r"smaller than the 128x128 patch: .*img01.png \(200x64\)"
  ):
    images.check_images(paths, 128)


def test_train_val_split_and_crops(tmp_path):
  paths = write_images(tmp_path, [(64, 64), (96, 128), (80, 70)])
  train, val = data.split_train_val(paths, 1)
  assert train == paths[:2] and val == paths[2:]
  with pytest.raises(images.DataError, match="need more than val_images=3"):
    data.split_train_val(paths, 3)
  crops = data.center_crops(val, 64)
  assert crops.shape == (1, 64, 64, 3)
  original = images.load_image(val[0])
  np.testing.assert_array_equal(crops[0].numpy(), original[8:72, 3:67])
  batch = next(iter(data.random_crops(train, 64, 5, seed=1)))
  assert batch.shape == (5, 64, 64, 3) and float(batch.numpy().max()) <= 255


def test_kodak_config_reads_the_environment(monkeypatch, tmp_path):
  from cbexp.config import compose

  monkeypatch.setenv("CBEXP_KODAK_DIR", str(tmp_path))
  assert compose(["eval=kodak"]).eval.path == str(tmp_path)
  assert compose(["dataset=kodak"]).dataset.path == str(tmp_path)


def serve(folder):
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_download_kodak_from_a_local_server(tmp_path, capsys):
  remote = tmp_path / "remote"
  write_images(remote, [(16, 24)] * 24)
  for i, path in enumerate(sorted(remote.iterdir())):
    path.rename(remote / f"kodim{i + 1:02d}.png")
  server, url = serve(remote)
  try:
    assert datasets.main(["download-kodak", str(tmp_path / "kodak"), "--url", url]) == 0
    assert sorted(p.name for p in (tmp_path / "kodak").iterdir()) == list(data.KODAK_NAMES)
    assert images.load_image(tmp_path / "kodak" / "kodim24.png").shape == (16, 24, 3)
    # a server that answers with something else than PNGs: nothing kept, one line
    (remote / "kodim01.png").write_text("<html>proxy login</html>")
    assert datasets.main(["download-kodak", str(tmp_path / "k2"), "--url", url]) == 2
    assert "kodim01.png: not a PNG image" in capsys.readouterr().err
    assert not list((tmp_path / "k2").iterdir())
  finally:
    server.shutdown()


def test_dark_16_bit_png_stays_dark(tmp_path):
  """16-bit samples are scaled by the 16-bit range, not by the image's own maximum."""
  import numpy as np
  from PIL import Image

  from cbexp.images import load_image

  values = np.array([[0, 257], [1000, 65535]], dtype=np.uint16)
  path = tmp_path / "dark16.png"
  Image.fromarray(values).save(path)
  loaded = load_image(path)
  assert loaded.shape == (2, 2, 3)
  np.testing.assert_array_equal(loaded[..., 0], [[0, 1], [4, 255]])
