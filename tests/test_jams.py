"""JAMS import: files written by ``jams`` itself give the store targets the same annotations give
written directly as pyjama, frame for frame; unknown namespaces are counted; bad files named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from common.store import read_tables
from precompute.cli import main
from precompute.pipeline import run

from .conftest import tone, write_json, write_wav
from .dense_targets import read_target

jams = pytest.importorskip("jams")

DUR = 3.0
STEP = 0.01
TIMES = [round(k * STEP, 2) for k in range(int(DUR / STEP))]


def hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def melody(t: float) -> float:
    return 60.0 if 0.5 <= t < 1.5 else (67.0 if 2.0 <= t < 2.5 else 0.0)


def bass(t: float) -> float:
    return 48.0 if t < 2.0 else 0.0


def _jam(path, genre: str, work: str, extra_namespace: bool = False):
    jam = jams.JAMS()
    jam.file_metadata.duration = DUR
    notes = jams.Annotation("note_midi")
    notes.append(time=0.5, duration=1.0, value=60.0)
    notes.append(time=2.0, duration=0.5, value=67.0)
    contour = jams.Annotation("pitch_contour")
    for t in TIMES:  # two voices in one contour, told apart by their index
        for index, voice in ((0, melody), (1, bass)):
            m = voice(t)
            contour.append(time=t, duration=0.0, confidence=1.0,
                           value={"index": index, "frequency": hz(m) if m else 0.0, "voiced": m > 0})  # fmt: skip
    chords = jams.Annotation("chord")
    chords.append(time=0.0, duration=1.0, value="C:maj")
    chords.append(time=1.0, duration=2.0, value="G:maj")
    tag = jams.Annotation("tag_gtzan")
    tag.append(time=0.0, duration=DUR, value=genre)
    beats = jams.Annotation("beat")
    for t in (0.25, 0.75, 1.25, 2.25):
        beats.append(time=t, duration=0.0, value=1)
    jam.annotations.extend([notes, contour, chords, tag, beats])
    if extra_namespace:
        mood = jams.Annotation("mood_thayer")
        mood.append(time=0.0, duration=DUR, value=[0.5, 0.5])
        jam.annotations.append(mood)
    jam.sandbox.work_id = work
    path.parent.mkdir(parents=True, exist_ok=True)
    jam.save(str(path))


def _direct(root, names_genres_works):
    """The same annotations written directly as pyjama."""
    entries = []
    for name, genre, work in names_genres_works:
        entries.append({
            "filepath": [{"value": f"audio/{name}.wav"}],
            "note_midi": [{"time": 0.5, "duration": 1.0, "value": 60.0},
                          {"time": 2.0, "duration": 0.5, "value": 67.0}],
            "f0": [{"time": TIMES, "value": [[melody(t) for t in TIMES], [bass(t) for t in TIMES]]}],
            "chord": [{"time": 0.0, "duration": 1.0, "value": "C:maj"},
                      {"time": 1.0, "duration": 2.0, "value": "G:maj"}],
            "tag_gtzan": [{"value": genre}],
            "beat": [{"time": t} for t in (0.25, 0.75, 1.25, 2.25)],
            "work-id": [{"value": work}],
        })  # fmt: skip
    definitions = {
        "note_midi": {"type_content": "numeric", "type_extent": "segment"},
        "f0": {"type_content": "numeric", "type_extent": "breakpoint"},
        "chord": {"type_content": "text", "type_extent": "segment"},
        "tag_gtzan": {"type_content": "text", "type_extent": "global"},
        "beat": {"type_content": "numeric", "type_extent": "marker"},
        "work-id": {"type_content": "text", "type_extent": "global"},
    }
    doc = {"schemaversion": 1.4,
           "collection": {"descriptiondefinition": definitions, "entry": entries}}  # fmt: skip
    return write_json(root / "direct.pyjama", doc)


def _targets(store):
    return {n: read_target(store, n) for n in read_tables(store).targets}


@pytest.fixture
def jams_folder(tmp_path):
    files = [("a", "blues", "w1"), ("b", "jazz", "w1"), ("c", "blues", "w2")]
    for i, (name, genre, work) in enumerate(files):
        write_wav(tmp_path / "audio" / f"{name}.wav", tone(55 + i, DUR))
        _jam(tmp_path / "jams" / f"{name}.jams", genre, work, extra_namespace=i == 0)
    return tmp_path, files


def test_jams_import_gives_the_targets_of_the_same_annotations_written_as_pyjama(jams_folder):
    root, files = jams_folder
    out = root / "imported.pyjama"
    res = CliRunner().invoke(
        main,
        ["import", "jams", str(root / "jams"), "-o", str(out), "--audio-root", str(root / "audio")],
    )
    assert res.exit_code == 0, res.output
    # the unknown namespace is imported around, and counted
    assert "3 entries; not imported: mood_thayer (1)" in res.output
    imported = run(out, "cqt", root / "stores").store_path
    direct = run(_direct(root, files), "cqt", root / "stores").store_path
    a, b = _targets(imported), _targets(direct)
    assert sorted(a) == sorted(b) == ["beat", "chord", "f0", "note_midi", "tag_gtzan", "work-id"]
    for name in a:
        assert a[name].shape == b[name].shape and np.array_equal(a[name], b[name]), name
    assert a["f0"].sum() > 0 and a["beat"].sum() == 3 * 4  # not vacuous: voices and beats are there
    doc = json.loads(out.read_text())
    f0 = doc["collection"]["entry"][0]["f0"][0]
    assert len(f0["value"]) == 2 and len(f0["value"][0]) == len(TIMES)  # one row per voice


def test_a_malformed_jams_is_named_and_the_others_are_imported(jams_folder):
    root, files = jams_folder
    (root / "jams" / "b.jams").write_text('{"annotations": [')  # cut short
    bad = json.loads((root / "jams" / "c.jams").read_text())
    bad["annotations"][0]["data"][0]["value"] = "not a pitch"  # note_midi wants a number
    (root / "jams" / "c.jams").write_text(json.dumps(bad))
    out = root / "imported.pyjama"
    res = CliRunner().invoke(
        main,
        ["import", "jams", str(root / "jams"), "-o", str(out), "--audio-root", str(root / "audio")],
    )
    assert res.exit_code == 1
    assert f"error: {root / 'jams' / 'b.jams'}: not readable JSON" in res.output
    assert f"error: {root / 'jams' / 'c.jams'}: annotation 0 (note_midi): " in res.output
    doc = json.loads(out.read_text())
    assert [e["filepath"][0]["value"] for e in doc["collection"]["entry"]] == ["audio/a.wav"]
