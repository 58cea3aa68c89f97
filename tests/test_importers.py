"""Importers from folder-per-class trees and .lab/.csv segment files."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from common.pyjama import read_pyjama
from precompute.cli import main
from precompute.importers import ImportError_

from .conftest import tone, write_wav


def test_import_folder_gtzan_style(tmp_path):
    for label in ("blues", "jazz"):
        for i in range(2):
            write_wav(tmp_path / "genres" / label / f"{label}.{i:05d}.wav", tone(60, 0.1))
    out = tmp_path / "meta" / "gtzan.pyjama"
    res = CliRunner().invoke(
        main, ["import", "folder", str(tmp_path / "genres"), "--key", "genre", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    coll = read_pyjama(out)
    assert [e.filepath for e in coll.entries][:1] == ["../genres/blues/blues.00000.wav"]
    assert all(e.audio_path.is_file() for e in coll.entries)
    assert [e.descriptions["genre"].atoms[0].value for e in coll.entries] == [
        "blues",
        "blues",
        "jazz",
        "jazz",
    ]
    assert coll.definitions["genre"].dictionary == ["blues", "jazz"]


def test_import_lab_start_end_and_start_duration(tmp_path):
    audio = tmp_path / "audio"
    write_wav(audio / "song1.wav", tone(60, 0.1))
    write_wav(audio / "song2.wav", tone(60, 0.1))
    write_wav(audio / "nolab.wav", tone(60, 0.1))
    (audio / "song1.lab").write_text("0.0 1.5 C:maj\n1.5 3.0 G:maj\n")
    (audio / "song2.csv").write_text("start,end,label\n0.0,2.0,N\n")
    out = tmp_path / "chords.pyjama"
    res = CliRunner().invoke(main, ["import", "lab", str(audio), "--key", "chord", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "nolab.wav: no .lab or .csv found" in res.output
    coll = read_pyjama(out)
    atoms = coll.entries[0].descriptions["chord"].atoms
    assert [(a.time, a.duration, a.value) for a in atoms] == [
        (0.0, 1.5, "C:maj"),
        (1.5, 1.5, "G:maj"),
    ]
    assert coll.definitions["chord"].type_extent == "segment"

    (audio / "song1.lab").write_text("0.5 0.25 60\n")
    (audio / "song2.csv").unlink()
    res = CliRunner().invoke(
        main,
        [
            "import",
            "lab",
            str(audio),
            "--key",
            "pitchmidi",
            "-o",
            str(out),
            "--columns",
            "start-duration",
        ],
    )
    assert res.exit_code == 0, res.output
    coll = read_pyjama(out)
    assert coll.definitions["pitchmidi"].type_content == "numeric"
    assert coll.entries[0].descriptions["pitchmidi"].atoms[0].duration == 0.25


def test_bad_lab_line_is_named(tmp_path):
    from precompute.importers import read_segments

    (tmp_path / "x.lab").write_text("0.0 1.0 C\n1.0 oops G\n")
    with pytest.raises(ImportError_, match=r"x.lab:2: start and end must be numbers"):
        read_segments(tmp_path / "x.lab")
