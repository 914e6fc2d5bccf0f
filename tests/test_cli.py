"""The command line: every command has help, user errors are one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from iratrainer.cli import build_parser, main


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("cmd", subcommands())
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as ex:
        main([cmd, "--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: iratrainer " + cmd)


def test_atlas_command_writes_model_preview_and_vtp(tmp_path, capsys):
    out = tmp_path / "m.vessels.json"
    rc = main(["atlas", "--arch", "II", "--seed", "4", "--bovine", "--out", str(out),
               "--preview", str(tmp_path / "p.png"), "--vtp", str(tmp_path / "m.vtp")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["metadata"]["atlas"] == {"arch": "II", "seed": 4, "tortuosity": 1.0, "bovine": True}
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    assert (tmp_path / "m.vtp").stat().st_size > 10_000
    assert f"{len(doc['branches'])} branches" in capsys.readouterr().out


def test_preview_image_shows_the_tree(tmp_path):
    """The preview is a picture of vessels: coloured pixels in each of the six panels."""
    import matplotlib.image as mpimg

    main(["atlas", "--out", str(tmp_path / "m.vessels.json"), "--preview", str(tmp_path / "p.png")])
    img = mpimg.imread(tmp_path / "p.png")[..., :3]
    h, w = img.shape[:2]
    coloured = (img.max(axis=2) - img.min(axis=2)) > 0.25
    for r in range(2):
        for c in range(3):
            panel = coloured[r * h // 2:(r + 1) * h // 2, c * w // 3:(c + 1) * w // 3]
            assert panel.mean() > 0.002, (r, c)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["model", "{tmp}/missing.vessels.json"], "missing.vessels.json: no such file"),
        (["model", "{tmp}/bad.vessels.json"], "bad.vessels.json: not valid JSON"),
        (["atlas", "--out", "{tmp}/nofolder/x.vessels.json"], "does not exist"),
        (["atlas", "--tortuosity", "9", "--out", "{tmp}/x.vessels.json"], "tortuosity"),
        (["bench", "nosuchgroup"], "unknown benchmark group"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, needle):
    (tmp_path / "bad.vessels.json").write_text('{"format": "iratrainer.vessels", "bra')
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_no_traceback(tmp_path):
    """The real process: exit code 2 and one line, through `python -m iratrainer`."""
    p = subprocess.run([sys.executable, "-m", "iratrainer", "model", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().endswith("x.json: no such file") and "Traceback" not in p.stderr


def test_default_command_without_display_says_how_and_shows_the_trainer(capsys, _private_home, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("LANG", "en_GB.UTF-8")
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "No display" in out and "--headless" in out
    shots = _private_home / "screenshots"
    assert {p.name for p in shots.glob("*.png")} == {"1-briefing.png", "2-fluoroscopy.png", "3-help.png"}


def test_preview_command_writes_preview_headless(capsys, _private_home):
    assert main(["preview"]) == 0
    out = capsys.readouterr().out
    assert "no display" in out
    assert (_private_home / "atlas-preview.png").stat().st_size > 50_000


def test_bench_anatomy_prints_json_lines(capsys):
    assert main(["bench", "anatomy", "--repeats", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = {r["name"] for r in rows}
    assert "anatomy.lumen_distance" in names
    for r in rows:
        assert set(r) >= {"name", "value", "unit", "workload"} and r["value"] > 0


def test_a_reader_that_stops_reading_ends_the_command_quietly():
    """``iratrainer bench | head -1``: the closed pipe ends the command with 141 (128 + SIGPIPE)
    and no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "iratrainer", "bench", "anatomy", "--repeats", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()  # the reader goes away after one line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert first.startswith(b"{") and "Traceback" not in err
