"""`riskmask redact` end to end: a real photo, a folder, a short real-pixel video, and bad input."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

from infra.sample_data import ASTRONAUT_FACE_BOX, astronaut
from pipelines.masking import mask_region
from pipelines.models.detector import load_detector
from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer
from riskmask.cli import main


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> pathlib.Path:
    p = tmp_path_factory.mktemp("in") / "astronaut.png"
    cv2.imwrite(str(p), astronaut())
    return p


def _face_cosine(clean: np.ndarray, redacted: np.ndarray) -> float:
    det = load_detector("yunet").detect(clean)[0]
    rec = load_recognizer()
    return float(rec.embed(clean, [det])[0] @ rec.embed(redacted, [det])[0])


def _detail(img: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours (edges, texture)."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(float)
    return float(np.abs(np.diff(g, axis=1)).mean())


def test_redact_image(photo: pathlib.Path, tmp_path, capsys) -> None:
    out = tmp_path / "out.png"
    assert main(["redact", str(photo), str(out)]) == 0
    summary = capsys.readouterr().out
    assert "1 face(s) masked" in summary and "default-v1" in summary
    clean, red = cv2.imread(str(photo)), cv2.imread(str(out))
    assert red.shape == clean.shape
    x0, y0, x1, y1 = mask_region(ASTRONAUT_FACE_BOX, 1.75, 512, 512)
    changed = np.any(red != clean, axis=2)
    assert changed[y0:y1, x0:x1].mean() > 0.8
    changed[max(0, y0 - 12):y1 + 12, max(0, x0 - 12):x1 + 12] = False  # box enlarged by the detector's own box
    assert changed.mean() < 0.001
    assert _face_cosine(clean, red) < MATCH_THRESHOLD


def test_redact_image_options(photo: pathlib.Path, tmp_path) -> None:
    out = tmp_path / "solid.jpg"
    assert main(["redact", str(photo), str(out), "--mode", "solid", "--policy", "paper",
                 "--threshold", "0.5", "--threads", "1"]) == 0
    red = cv2.imread(str(out))
    x, y, w, h = ASTRONAUT_FACE_BOX
    assert red[y + h // 2 - 5:y + h // 2 + 5, x + w // 2 - 5:x + w // 2 + 5].max() < 20  # black (JPEG noise)
    outdir = tmp_path / "into_dir"
    outdir.mkdir()
    assert main(["redact", str(photo), str(outdir)]) == 0
    assert (outdir / "astronaut.png").is_file()


def test_redact_folder_skips_unreadable(photo: pathlib.Path, tmp_path, capsys) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "a.jpg"), astronaut())
    cv2.imwrite(str(src / "sub" / "b.png"), cv2.resize(astronaut(), (256, 256)))
    (src / "broken.jpg").write_bytes(b"not an image")
    (src / "notes.txt").write_text("ignored")
    dst = tmp_path / "dst"
    assert main(["redact", str(src), str(dst)]) == 0
    summary = capsys.readouterr().out
    assert (dst / "a.jpg").is_file() and (dst / "sub" / "b.png").is_file()
    assert not (dst / "broken.jpg").exists()
    assert "2 face(s) masked" in summary and "skipped 1" in summary and "broken.jpg" in summary


def test_redact_video(tmp_path, capsys) -> None:
    src = tmp_path / "clip.avi"
    frames = []
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (512, 512))
    base = astronaut()
    for i in range(6):
        frame = np.roll(base, 4 * i, axis=1)  # the face moves right
        frames.append(frame)
        writer.write(frame)
    writer.release()
    out = tmp_path / "clip_redacted.mp4"
    assert main(["redact", str(src), str(out)]) == 0
    assert "6 frame(s)" in capsys.readouterr().out
    cap = cv2.VideoCapture(str(out))
    got = []
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        got.append(fr)
    cap.release()
    assert len(got) == 6
    for i, fr in enumerate(got):
        x, y, w, h = ASTRONAUT_FACE_BOX
        face_in = frames[i][y:y + h, x + 4 * i:x + 4 * i + w]
        face_out = fr[y:y + h, x + 4 * i:x + 4 * i + w]
        assert _detail(face_out) < 0.3 * _detail(face_in)  # fine detail removed in every frame
    assert _face_cosine(frames[0], got[0]) < MATCH_THRESHOLD


@pytest.mark.parametrize("make,needle", [
    (lambda d: d / "missing.jpg", "does not exist"),
    (lambda d: (d / "notes.txt", (d / "notes.txt").write_text("x"))[0], "neither an image"),
    (lambda d: (d / "bad.jpg", (d / "bad.jpg").write_bytes(b"\x00garbage"))[0], "cannot decode"),
    (lambda d: (d / "bad.mp4", (d / "bad.mp4").write_bytes(b"\x00garbage"))[0], "video"),
    (lambda d: (d / "empty", (d / "empty").mkdir())[0], "no images"),
])
def test_bad_input_one_line_nonzero(tmp_path, capsys, make, needle) -> None:
    src = make(tmp_path)
    assert main(["redact", str(src), str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("riskmask: error:") and needle in err


def test_bad_options(photo: pathlib.Path, tmp_path, capsys) -> None:
    assert main(["redact", str(photo), str(tmp_path / "o.png"), "--policy", "nosuch"]) == 2
    assert "no policy" in capsys.readouterr().err
    assert main(["redact", str(photo), str(photo)]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["redact", str(photo), str(tmp_path / "o.xyz")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["redact", str(photo), str(tmp_path / "o.png"), "--threshold", "2"])
    assert exc.value.code == 2
