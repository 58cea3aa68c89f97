"""mirdata import, offline: a hand-written index and a few seconds of generated audio for
gtzan_genre, medleydb_pitch and guitarset give pyjamas with the expected entries and labels,
and ``precompute run`` builds a store from each. Runs only where mirdata is installed (CI
installs it through the Makefile)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from precompute.cli import main
from precompute.pipeline import run

from .conftest import tone, write_json, write_wav
from .dense_targets import read_target

pytest.importorskip("mirdata")


def _import(name, home, index):
    out = home / f"{name}.pyjama"
    res = CliRunner().invoke(main, ["import", "mirdata", name, "--data-home", str(home),
                                    "--index", str(index), "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, json.loads(out.read_text())["collection"]["entry"], res.output


def test_gtzan_genre(tmp_path):
    tracks = {}
    for i, genre in enumerate(["blues", "hiphop", "blues"]):
        tid = f"{genre}.{i:05d}"
        rel = f"gtzan_genre/genres/{genre}/{tid}.wav"
        write_wav(tmp_path / rel, tone(50 + i, 1.5))
        tracks[tid] = {"audio": [rel, None], "beats": [None, None], "tempo": [None, None]}
    index = write_json(tmp_path / "index.json", {"version": "1.0", "tracks": tracks})
    out, entries, _ = _import("gtzan_genre", tmp_path, index)
    assert sorted(e["genre"][0]["value"] for e in entries) == ["blues", "blues", "hip-hop"]
    store = run(out, "lms", tmp_path / "stores").store_path
    with h5py.File(store) as h:
        assert sorted(json.loads(h["targets/genre"].attrs["vocabulary"])) == ["blues", "hip-hop"]


def test_medleydb_pitch(tmp_path):
    tid = "AClassicEducation_NightOwl_STEM_08"
    write_wav(tmp_path / f"audio/{tid}.wav", tone(57, 2.0))  # A3 = 220 Hz
    times = np.arange(0, 2.0, 0.0058)
    freqs = np.where((times > 0.5) & (times < 1.5), 220.0, 0.0)
    (tmp_path / "pitch").mkdir()
    (tmp_path / f"pitch/{tid}.csv").write_text(
        "\n".join(f"{t:.4f},{f:.2f}" for t, f in zip(times, freqs))
    )
    write_json(tmp_path / "medleydb_pitch_metadata.json",
               {tid: {"instrument": "violin", "genre": "Singer/Songwriter", "artist": "A", "title": "N"}})  # fmt: skip
    index = write_json(tmp_path / "index.json", {"version": "3.0", "tracks": {tid: {
        "audio": [f"audio/{tid}.wav", None], "pitch": [f"pitch/{tid}.csv", None],
        "notes_pyin": [None, None]}}})  # fmt: skip
    out, (entry,), _ = _import("medleydb_pitch", tmp_path, index)
    assert entry["instrument"] == [{"value": "violin"}]
    assert entry["genre"] == [{"value": "Singer/Songwriter"}]
    (row,) = entry["pitch"][0]["value"]
    voiced = np.array(row) > 0
    assert np.allclose(np.array(row)[voiced], 57.0) and voiced.sum() == (freqs > 0).sum()
    store = run(out, "cqt", tmp_path / "stores").store_path
    pitch = read_target(store, "pitch")
    on = pitch.any(axis=1)
    t = np.arange(len(on)) * 512 / 22050
    assert on[(t > 0.6) & (t < 1.4)].all() and not on[t < 0.4].any()


def _guitarset_jams(path, duration: float = 2.0):
    hop = 256 / 44100
    t = [round(k * hop, 6) for k in range(int(duration / hop))]
    anns = [
        {
            "namespace": "beat_position",
            "annotation_metadata": {},
            "data": [
                {
                    "time": x,
                    "duration": 0.0,
                    "value": {
                        "position": k % 4 + 1,
                        "measure": k // 4,
                        "num_beats": 4,
                        "beat_units": 4,
                    },
                    "confidence": None,
                }
                for k, x in enumerate([0.2, 0.7, 1.2, 1.7])
            ],
        },
        *(
            {
                "namespace": "chord",
                "annotation_metadata": {},
                "data": [
                    {"time": 0.0, "duration": 1.0, "value": "E:min", "confidence": None},
                    {"time": 1.0, "duration": 1.0, "value": "A:maj", "confidence": None},
                ],
            }
            for _ in range(2)
        ),
        {
            "namespace": "key_mode",
            "annotation_metadata": {},
            "data": [{"time": 0.0, "duration": duration, "value": "E:minor", "confidence": None}],
        },
    ]
    for s in range(6):
        f = 82.41 * 2 ** (s * 5 / 12) if s < 2 else 0.0  # the low strings sound
        anns.append(
            {
                "namespace": "pitch_contour",
                "annotation_metadata": {"data_source": str(s)},
                "data": {
                    "time": t,
                    "duration": [0.0] * len(t),
                    "confidence": [None] * len(t),
                    "value": [{"index": 0, "frequency": f, "voiced": f > 0}] * len(t),
                },
            }
        )
        notes = (
            [{"time": 0.1, "duration": 1.5, "value": 40.0 + 5 * s, "confidence": None}]
            if s < 2
            else []
        )
        anns.append(
            {
                "namespace": "note_midi",
                "annotation_metadata": {"data_source": str(s)},
                "data": notes,
            }
        )
    write_json(path, {"annotations": anns, "file_metadata": {"duration": duration}, "sandbox": {}})  # fmt: skip


def test_guitarset(tmp_path):
    tid = "00_BN1-129-Eb_comp"
    write_wav(tmp_path / f"audio_mono-mic/{tid}_mic.wav", tone(40, 2.0) + tone(45, 2.0))
    (tmp_path / "annotation").mkdir()
    _guitarset_jams(tmp_path / f"annotation/{tid}.jams")
    index = write_json(tmp_path / "index.json", {"version": "1.1.0", "tracks": {tid: {
        "audio_hex_cln": [None, None], "audio_hex": [None, None],
        "audio_mic": [f"audio_mono-mic/{tid}_mic.wav", None], "audio_mix": [None, None],
        "jams": [f"annotation/{tid}.jams", None]}}})  # fmt: skip
    out, (entry,), output = _import("guitarset", tmp_path, index)
    assert entry["filepath"] == [{"value": f"audio_mono-mic/{tid}_mic.wav"}]
    assert entry["style"] == [{"value": "Bossa Nova"}] and entry["mode"] == [{"value": "comp"}]
    assert entry["tempo"] == [{"value": 129.0}]
    assert [a["value"] for a in entry["leadsheet_chords"]] == ["E:min", "A:maj"]
    assert [a["value"] for a in entry["key_mode"]] == ["E:minor"]
    assert [a["time"] for a in entry["beats"]] == [0.2, 0.7, 1.2, 1.7]
    assert sorted(a["value"] for a in entry["notes_all"]) == [40.0, 45.0]
    rows = np.array(entry["multif0"][0]["value"])
    assert rows.shape[0] == 2 and np.allclose(rows[:, 1], [40.0, 45.0], atol=0.01)
    assert "not imported: notes (1), pitch_contours (1)" in output  # per-string dicts
    store = run(out, "cqt", tmp_path / "stores").store_path
    with h5py.File(store) as h:
        assert {"notes_all", "multif0", "leadsheet_chords", "beats", "style"} <= set(h["targets"])
    assert read_target(store, "multif0").sum() > 0


def test_a_missing_index_says_how_to_get_it(tmp_path):
    res = CliRunner().invoke(
        main, ["import", "mirdata", "gtzan_genre", "--data-home", str(tmp_path)]
    )
    assert res.exit_code == 2  # a user's error, said as "error: ..."
    assert "no index of gtzan_genre at " in res.output and "--index FILE" in res.output
    assert "download(partial_download=['index'])" in res.output
