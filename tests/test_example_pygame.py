# The pygame example (reactor_mgmt/examples/pygame_loop.py), started as a real process with SDL's
# dummy video and audio drivers (no window, no sound device: what CI has) and driven by OpenBSD
# nc and the project's CLI, like the examples in test_examples.py, whose helpers it uses. Besides
# the commands, it checks what the loop's shape promises: frames go on while commands are served
# (a flood of them, or a paused simulation), the simulation step does not follow the frame rate,
# a deferred reply waits for the next drawn frame, and SIGTERM, Ctrl-C and `shutdown` exit 0.
# Without pygame the module is skipped, saying why; under CI (the CI variable set) that fails.
from __future__ import annotations

import importlib
import importlib.util
import signal
import subprocess
import sys
import time
from typing import Callable, Dict

import pytest

from conftest import IN_CI, ROOT, TIMEOUT, Daemon, child_env
from test_examples import cli, eventually, fields, launch, nc, pipelined_pings, stop_cleanly, table  # noqa: F401

HEADLESS = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}


@pytest.fixture(autouse=True)
def require_pygame() -> None:
    if importlib.util.find_spec("pygame") is not None:
        return
    message = "pygame is not installed (pip install 'pygame>=2.5'; the test extra has it)"
    if IN_CI:
        pytest.fail(message + " (CI must install the test extra: see .ci/run)")
    pytest.skip(message)


@pytest.fixture
def start_game(launch: Callable[..., Daemon]) -> Callable[[], Daemon]:  # noqa: F811 (test_examples' fixture)
    return lambda: launch("pygame_loop", env=HEADLESS)


@pytest.fixture
def game(start_game: Callable[[], Daemon]) -> Daemon:
    return start_game()


def status(daemon: Daemon) -> Dict[str, str]:
    return fields(nc(daemon, "status\n"))


def test_docstring_and_options(capsys):
    module = importlib.import_module("reactor_mgmt.examples.pygame_loop")
    assert module.__doc__ and len(module.__doc__.split()) > 40  # explains its loop's shape
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "--port" in usage and "--address-file" in usage and "--fps" in usage
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--fps", "0"])
    assert exit_info.value.code == 2
    assert "--fps must be between 1 and 240" in capsys.readouterr().err


def test_pygame_loop(game):
    first = status(game)
    assert first["video_driver"] == "dummy" and first["target_fps"] == "60" and first["step_hz"] == "120"
    assert first["entities"] == "20" and first["paused"] == "False"
    # Frames are drawn and pygame's Clock measures them (get_fps() needs ten frames first).
    later = fields(
        eventually(
            lambda: nc(game, "status\n"),
            lambda out: int(fields(out)["frames"]) > int(first["frames"]) + 10 and float(fields(out)["fps"]) > 0,
        )
    )
    # Paced at 60 (a late frame caught up reads a little above): it never runs ahead of its rate.
    assert float(later["fps"]) <= 70
    assert int(later["steps"]) > int(first["steps"])

    assert nc(game, "spawn 0\nspawn 1001\nspawn 100\nspawn\n") == (
        "ERR N must be between 1 and 1000\n"
        "ERR N must be between 1 and 1000\n"
        "spawned 100 (120 in all)\n"
        "spawned 1 (121 in all)\n"
    )
    rows = table(nc(game, "show entities 3\n"))
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    assert set(rows[0]) == {"id", "x", "y", "vx", "vy"}
    # The simulation moves them between two requests.
    eventually(lambda: nc(game, "show entities 3\n"), lambda out: table(out)[0]["x"] != rows[0]["x"])

    # `snapshot` is answered once the next frame has been drawn: a later frame, with every ball.
    frames_before = int(status(game)["frames"])
    shot = fields(nc(game, "snapshot\n"))
    assert int(shot["frame"]) > frames_before and shot["entities"] == "121"
    assert nc(game, "clear\nclear\n") == "removed 121\nremoved 0\n"
    empty = fields(nc(game, "snapshot\n"))
    assert empty["entities"] == "0" and 0 < int(empty["lit_pixels"]) < int(shot["lit_pixels"])  # the HUD is left
    assert nc(game, "show entities\n") == "no entities\n"

    out = nc(game, "spawn 10\npause\npause\n").splitlines()
    assert out[0] == "spawned 10 (10 in all)" and out[1].startswith("paused at step ") and out[2] == "already paused"
    paused = status(game)
    resumed = fields(
        eventually(lambda: nc(game, "status\n"), lambda out: int(fields(out)["frames"]) > int(paused["frames"]) + 5)
    )
    assert resumed["steps"] == paused["steps"] and resumed["paused"] == "True"  # frames go on, the game does not
    assert nc(game, "resume\nresume\n").splitlines()[1] == "not paused"

    proc = cli(game, "spawn", "5")
    assert (proc.returncode, proc.stdout) == (0, "spawned 5 (15 in all)\n")
    proc = cli(game, "set", "fps", "500")
    assert (proc.returncode, proc.stderr) == (1, "ERR fps must be between 1 and 240\n")
    pipelined_pings(game)

    # `shutdown` stops the loop from a handler: the reply still goes out, then a clean exit.
    assert nc(game, "shutdown\n") == "closing the window\n"
    assert game.proc.wait(TIMEOUT) == 0


def test_the_simulation_step_does_not_follow_the_frame_rate(game):
    assert nc(game, "set fps 20\n") == "fps 20\n"
    start = eventually(lambda: nc(game, "status\n"), lambda out: 0 < float(fields(out)["fps"]) <= 22)
    time.sleep(1.0)
    end = status(game)
    frames = int(end["frames"]) - int(fields(start)["frames"])
    steps = int(end["steps"]) - int(fields(start)["steps"])
    assert 5 <= frames <= 40  # about 20 in the second (plus two round trips): paced, not spinning
    # 120 steps per game second at any frame rate: six a frame at 20 fps (more if frames ran late).
    assert steps >= 5 * frames, (steps, frames)
    stop_cleanly(game)


def test_frames_go_on_while_a_flood_of_commands_is_served(game):
    count = 50000
    out = nc(game, "status\n" + "ping\n" * count + "status\n")
    parts = out.split("pong\n")
    assert len(parts) == count + 1
    before, after = fields(parts[0]), fields(parts[-1])
    # Commands run only in the time a frame leaves, so frames were drawn while they were served.
    assert int(after["frames"]) > int(before["frames"])
    stop_cleanly(game, signal.SIGINT)


def test_signals_exit_0_and_a_stall_drops_the_backlog(start_game):
    daemon = start_game()
    assert status(daemon)["dropped_steps"] == "0"
    daemon.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.3)  # 36 steps' worth: more than the loop catches up in one frame
    daemon.proc.send_signal(signal.SIGCONT)
    assert int(status(daemon)["dropped_steps"]) > 0
    err = stop_cleanly(daemon, signal.SIGTERM)
    assert "video driver dummy" in err
    stop_cleanly(start_game(), signal.SIGINT)


def test_without_a_video_driver_it_says_so():
    env = child_env({"SDL_VIDEODRIVER": "no-such-driver", "SDL_AUDIODRIVER": "dummy"})
    proc = subprocess.run(
        [sys.executable, "-m", "reactor_mgmt.examples.pygame_loop", "--port", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("pygame_loop: cannot open a window:") and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # no pygame banner either
