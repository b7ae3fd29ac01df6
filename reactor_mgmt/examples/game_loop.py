"""A fixed-timestep game loop at 60 Hz that serves its management socket between frames.

The simulation always advances in steps of exactly 1/60 s of game time (catching up a few steps
if a frame ran late, and giving up on the backlog beyond that, as game loops do). Whatever wall
time is left before the next step is due goes to ``server.poll(timeout=left, budget=left)``:
poll() sleeps until a client needs something or the frame is over, runs commands for at most
``left`` seconds, and returns; the loop then polls again until the next step is due. So
commands run between frames and never past a frame's end: a flood of commands delays replies,
not frames. A command that changes the game takes effect from the next step on.

Commands (``help`` lists them, ``help kick`` explains one)::

    status                          frame count, measured rate, speed
    show players                    a table of players and positions
    spawn NAME [X] [Y]              adds a player (the world is 100 x 100, and wraps)
    kick PLAYER [REASON] [--force]  removes a player; protected ones need --force
    set speed N                     scales game time (0 to 10)
    pause / resume                  stops and restarts the simulation (frames go on)

Try it::

    python -m reactor_mgmt.examples.game_loop
    printf 'spawn alice 10 20\\nshow players\\nkick npc --force\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from reactor_mgmt import CommandError, Server

RATE = 60
STEP = 1.0 / RATE
WORLD = 100.0
MAX_CATCH_UP = 5  # steps run back to back after a stall before the backlog is dropped


class Player:
    __slots__ = ("name", "x", "y", "vx", "vy", "protected")

    def __init__(self, name: str, x: float, y: float, protected: bool = False) -> None:
        self.name = name
        self.x = x
        self.y = y
        # Each name gets its own fixed heading, so runs are reproducible.
        angle = sum(name.encode()) * 37 % 360
        self.vx = 10.0 * math.cos(math.radians(angle))
        self.vy = 10.0 * math.sin(math.radians(angle))
        self.protected = protected


class Game:
    def __init__(self) -> None:
        self.players: Dict[str, Player] = {}
        self.step_count = 0  # simulation steps (not while paused)
        self.frames = 0  # loop frames, paused or not
        self.dropped = 0  # steps given up after a stall
        self.speed = 1.0
        self.paused = False
        self.started = time.monotonic()
        self.players["npc"] = Player("npc", WORLD / 2, WORLD / 2, protected=True)

    def step(self, dt: float) -> None:
        self.frames += 1
        if self.paused:
            return
        self.step_count += 1
        scaled = dt * self.speed
        for player in self.players.values():
            player.x = (player.x + player.vx * scaled) % WORLD
            player.y = (player.y + player.vy * scaled) % WORLD


def build_server(args: argparse.Namespace, game: Game) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)

    @server.command
    def status() -> Dict[str, Any]:
        """Frames run, the measured frame rate, players, speed and whether the game is paused."""
        elapsed = time.monotonic() - game.started
        return {
            "frames": game.frames,
            "steps": game.step_count,
            "rate_hz": round(game.frames / elapsed, 1) if elapsed > 0 else 0.0,
            "dropped_steps": game.dropped,
            "players": len(game.players),
            "speed": game.speed,
            "paused": game.paused,
        }

    @server.command(name="show players")
    def show_players() -> Any:
        """Every player with its position, as a table."""
        if not game.players:
            return "no players"
        return [
            {"name": p.name, "x": round(p.x, 1), "y": round(p.y, 1), "protected": p.protected}
            for p in sorted(game.players.values(), key=lambda p: p.name)
        ]

    @server.command(level="operator")
    def spawn(name: str, x: float = WORLD / 2, y: float = WORLD / 2) -> str:
        """Adds a player at X Y (the centre by default); the world is 100 x 100."""
        if name in game.players:
            raise CommandError(f"player {name!r} already exists")
        if not (0 <= x < WORLD and 0 <= y < WORLD):
            raise CommandError(f"position must be within 0..{WORLD:g} (got {x:g} {y:g})")
        game.players[name] = Player(name, x, y)
        return f"spawned {name} at {x:g} {y:g}"

    @server.command(level="operator")
    def kick(player: str, reason: str = "kicked by an operator", *, force: bool = False) -> str:
        """Removes PLAYER; a protected player (the npc) also needs --force."""
        target = game.players.get(player)
        if target is None:
            raise CommandError(f"no player {player!r}")
        if target.protected and not force:
            raise CommandError(f"{player} is protected; add --force to kick it anyway")
        del game.players[player]
        return f"kicked {player} ({reason})"

    @server.command(name="set speed", level="operator")
    def set_speed(n: float) -> str:
        """Scales game time: 1 is normal, 0.5 half speed, 0 frozen (at most 10)."""
        if not 0 <= n <= 10:
            raise CommandError("speed must be between 0 and 10")
        game.speed = n
        return f"speed {n:g}"

    @server.command(level="operator")
    def pause() -> str:
        """Stops the simulation; frames (and this socket) go on."""
        if game.paused:
            return "already paused"
        game.paused = True
        return f"paused at step {game.step_count}"

    @server.command(level="operator")
    def resume() -> str:
        """Restarts the simulation."""
        if not game.paused:
            return "not paused"
        game.paused = False
        return f"resumed at step {game.step_count}"

    return server


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.game_loop",
        description="A 60 Hz fixed-timestep game loop with a management socket.",
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    game = Game()
    stopping: List[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopping.append(number))
    server = build_server(args, game)
    print(f"game loop at {RATE} Hz; management socket on port {server.port}", file=sys.stderr)
    try:
        next_step = time.monotonic()
        while not stopping:
            now = time.monotonic()
            steps = 0
            while now >= next_step and steps < MAX_CATCH_UP:
                game.step(STEP)
                next_step += STEP
                steps += 1
            if now >= next_step:  # still behind (the process was stopped?): drop the backlog
                game.dropped += int((now - next_step) / STEP) + 1
                next_step = now + STEP
            # The rest of the frame belongs to the socket; even a late frame gives it a
            # millisecond, so a busy game cannot starve its operators.
            left = next_step - time.monotonic()
            server.poll(timeout=max(left, 0.0), budget=max(left, 0.001))
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
