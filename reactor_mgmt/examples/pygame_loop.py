"""A pygame game loop (fixed update step, one render per frame) that serves its management socket
in the time each frame leaves over.

The usual pygame loop ends each frame with ``clock.tick(fps)``, which sleeps away the rest of the
frame inside SDL_Delay(): the process is deaf to its socket for that time, and a
``server.poll(0)`` squeezed in before it would answer a request up to a frame late and could run
commands for as long as they like. So this loop paces itself instead. Each frame it handles
pygame's events, runs the simulation steps that are due (always exactly 1/120 s of game time
each, however fast frames come, catching up a few after a slow frame and dropping the backlog
beyond that), renders once and flips. Then the rest of the frame, up to the time the next one is
due, goes to ``server.poll(timeout=left, budget=left)``, in a loop until the frame is over:
poll() sleeps until a client needs something, runs commands for at most the time left, and
returns. A flood of commands delays replies, never frames, and an idle game does not spin.
``pygame.time.Clock`` is still there, but only to measure: ``clock.tick()`` without a frame rate
never sleeps, and ``clock.get_fps()`` is what ``status`` reports.

Handlers run between frames on the game's thread, so they change the world without locks; a
change shows from the next frame. ``snapshot`` is a deferred reply (a ``Pending``) that the loop
resolves once the next frame has been drawn. Only the display and font modules are initialised,
never the mixer, so the example needs no sound device. Without a display, run it with SDL's
dummy drivers (``SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy``), as the tests and CI do.

Commands (``help`` lists them, ``help spawn`` explains one)::

    status                  measured fps, frames, steps, entities, the last frame's work time
    spawn [N]               adds N bouncing balls (1 to 1000 at a time, 5000 in all)
    clear                   removes every ball
    show entities [N]       the first N balls (10 by default) and their positions
    pause / resume          stops and restarts the simulation (frames go on)
    set fps N               the frame rate (1 to 240); the simulation step does not change
    snapshot                waits for the next frame, then reports what it drew
    shutdown                closes the window and exits, as Escape or the window's close button do

Try it::

    SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy python -m reactor_mgmt.examples.pygame_loop
    printf 'spawn 200\\nsnapshot\\nstatus\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from typing import Any, Dict, List, Optional

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame's import prints a banner otherwise
import pygame  # noqa: E402

from reactor_mgmt import CommandError, Pending, Server  # noqa: E402

STEP_HZ = 120
STEP = 1.0 / STEP_HZ  # game time per simulation step, whatever the frame rate
MAX_CATCH_UP = 8  # steps run in one frame after a slow one before the backlog is dropped
WIDTH, HEIGHT = 640, 360
RADIUS = 4
MAX_SPAWN = 1000
MAX_ENTITIES = 5000
BACKGROUND = (12, 14, 28)
TEXT = (230, 230, 230)


class Ball:
    __slots__ = ("id", "x", "y", "vx", "vy", "colour")

    def __init__(self, ball_id: int, rng: random.Random) -> None:
        self.id = ball_id
        self.x = rng.uniform(RADIUS, WIDTH - RADIUS)
        self.y = rng.uniform(RADIUS, HEIGHT - RADIUS)
        self.vx = rng.uniform(-120.0, 120.0)  # pixels per second of game time
        self.vy = rng.uniform(-120.0, 120.0)
        self.colour = (rng.randrange(80, 256), rng.randrange(80, 256), rng.randrange(80, 256))


class Game:
    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.balls: List[Ball] = []
        self.next_id = 1
        self.rng = random.Random(20)  # the same balls every run
        self.steps = 0  # simulation steps run (none while paused)
        self.frames = 0  # frames rendered, paused or not
        self.dropped = 0  # steps given up after a stall
        self.paused = False
        self.work_ms = 0.0  # the last frame's update and render time
        self.frame_waiters: List[Pending] = []  # snapshots waiting for the next frame

    def spawn(self, count: int) -> None:
        for _ in range(count):
            self.balls.append(Ball(self.next_id, self.rng))
            self.next_id += 1

    def step(self) -> None:
        if self.paused:
            return
        self.steps += 1
        for ball in self.balls:
            ball.x += ball.vx * STEP
            ball.y += ball.vy * STEP
            if not RADIUS <= ball.x <= WIDTH - RADIUS:
                ball.vx = -ball.vx
                ball.x = min(max(ball.x, RADIUS), WIDTH - RADIUS)
            if not RADIUS <= ball.y <= HEIGHT - RADIUS:
                ball.vy = -ball.vy
                ball.y = min(max(ball.y, RADIUS), HEIGHT - RADIUS)

    def render(self, screen: pygame.Surface, font: pygame.font.Font, clock: pygame.time.Clock) -> None:
        screen.fill(BACKGROUND)
        for ball in self.balls:
            pygame.draw.circle(screen, ball.colour, (round(ball.x), round(ball.y)), RADIUS)
        hud = (
            f"{clock.get_fps():5.1f} fps  frame {self.frames}  step {self.steps}  "
            f"{len(self.balls)} balls{'  PAUSED' if self.paused else ''}"
        )
        screen.blit(font.render(hud, True, TEXT), (8, 8))
        self.frames += 1

    def resolve_snapshots(self, screen: pygame.Surface) -> None:
        """After a flip: answers the snapshots that waited for this frame."""
        waiters, self.frame_waiters = self.frame_waiters, []
        if waiters:
            # Pixels that are not background: what the frame drew.
            lit = WIDTH * HEIGHT - pygame.mask.from_threshold(screen, BACKGROUND, (1, 1, 1, 255)).count()
            report = {"frame": self.frames, "entities": len(self.balls), "lit_pixels": lit}
            for pending in waiters:
                pending.resolve(report)  # does nothing if its client has left


def build_server(args: argparse.Namespace, game: Game, clock: pygame.time.Clock, stopping: List[str]) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)

    @server.command
    def status() -> Dict[str, Any]:
        """Measured and target frame rate, frames, steps, balls, and the last frame's work time."""
        return {
            "fps": round(clock.get_fps(), 1),
            "target_fps": game.fps,
            "frames": game.frames,
            "steps": game.steps,
            "step_hz": STEP_HZ,
            "dropped_steps": game.dropped,
            "entities": len(game.balls),
            "paused": game.paused,
            "work_ms": round(game.work_ms, 2),
            "video_driver": pygame.display.get_driver(),
        }

    @server.command(level="operator")
    def spawn(n: int = 1) -> str:
        """Adds N bouncing balls at random places (1 to 1000 at a time, 5000 in all)."""
        if not 1 <= n <= MAX_SPAWN:
            raise CommandError(f"N must be between 1 and {MAX_SPAWN}")
        if len(game.balls) + n > MAX_ENTITIES:
            raise CommandError(f"too many balls: {len(game.balls)} + {n} is over {MAX_ENTITIES}")
        game.spawn(n)
        return f"spawned {n} ({len(game.balls)} in all)"

    @server.command(level="operator")
    def clear() -> str:
        """Removes every ball."""
        count = len(game.balls)
        game.balls.clear()
        return f"removed {count}"

    @server.command(name="show entities")
    def show_entities(n: int = 10) -> Any:
        """The first N balls (10 by default) with their positions and velocities, as a table."""
        if n < 1:
            raise CommandError("N must be at least 1")
        if not game.balls:
            return "no entities"
        return [
            {"id": b.id, "x": round(b.x, 1), "y": round(b.y, 1), "vx": round(b.vx, 1), "vy": round(b.vy, 1)}
            for b in game.balls[:n]
        ]

    @server.command(level="operator")
    def pause() -> str:
        """Stops the simulation; frames (and this socket) go on."""
        if game.paused:
            return "already paused"
        game.paused = True
        return f"paused at step {game.steps}"

    @server.command(level="operator")
    def resume() -> str:
        """Restarts the simulation."""
        if not game.paused:
            return "not paused"
        game.paused = False
        return f"resumed at step {game.steps}"

    @server.command(name="set fps", level="operator")
    def set_fps(n: float) -> str:
        """Sets the frame rate (1 to 240); the simulation still steps 120 times per game second."""
        if not 1 <= n <= 240:
            raise CommandError("fps must be between 1 and 240")
        game.fps = n
        return f"fps {n:g}"

    @server.command
    def snapshot() -> Pending:
        """Waits for the next frame to be drawn, then reports its number, balls and lit pixels."""
        pending = Pending(timeout=5)
        game.frame_waiters.append(pending)  # the loop resolves it after the next flip
        return pending

    @server.command(level="operator")
    def shutdown() -> str:
        """Closes the window and exits (after this reply has been sent)."""
        stopping.append("shutdown command")
        return "closing the window"

    return server


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.pygame_loop", description="A pygame game loop with a management socket."
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    parser.add_argument("--fps", type=float, default=60.0, help="frames per second, 1 to 240 (default 60)")
    parser.add_argument("--spawn", type=int, default=20, help="balls at the start (default 20)")
    args = parser.parse_args(argv)
    if not 1 <= args.fps <= 240:
        parser.error("--fps must be between 1 and 240")
    if not 0 <= args.spawn <= MAX_ENTITIES:
        parser.error(f"--spawn must be between 0 and {MAX_ENTITIES}")
    return args


def serve_until(server: Server, deadline: float, stopping: List[str]) -> None:
    """Gives the socket the rest of the frame: poll() sleeps until a client needs something or
    the frame is over, and runs commands for at most the time left. Even a late frame gives it
    a millisecond, so a slow game cannot starve its operators."""
    left = deadline - time.monotonic()
    server.poll(timeout=max(left, 0.0), budget=max(left, 0.001))
    while not stopping:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        server.poll(timeout=left, budget=left)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        pygame.display.init()
        screen = pygame.display.set_mode((WIDTH, HEIGHT))
    except pygame.error as exc:
        print(f"pygame_loop: cannot open a window: {exc} (SDL_VIDEODRIVER=dummy runs without one)", file=sys.stderr)
        pygame.quit()
        return 2
    pygame.display.set_caption("reactor_mgmt pygame example")
    pygame.font.init()
    font = pygame.font.Font(None, 20)
    clock = pygame.time.Clock()
    game = Game(args.fps)
    game.spawn(args.spawn)
    stopping: List[str] = []
    # Starting the display may install SDL's own SIGINT/SIGTERM handlers (they post a QUIT
    # event); these replace them and only set the flag, which the loop sees within a frame.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopping.append(signal.Signals(number).name))
    server = build_server(args, game, clock, stopping)
    print(
        f"pygame loop at {args.fps:g} fps ({STEP_HZ} Hz steps, video driver {pygame.display.get_driver()}); "
        f"management socket on port {server.port}",
        file=sys.stderr,
    )
    try:
        next_step = next_frame = time.monotonic()
        while not stopping:
            for event in pygame.event.get():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                    stopping.append("window closed")
                elif event.type == pygame.KEYDOWN and event.key == pygame.K_SPACE:
                    game.paused = not game.paused
            started = now = time.monotonic()
            steps = 0
            while now >= next_step and steps < MAX_CATCH_UP:  # fixed step: catch up a little
                game.step()
                next_step += STEP
                steps += 1
            if now >= next_step:  # still behind (the process was stopped?): drop the backlog
                game.dropped += int((now - next_step) / STEP) + 1
                next_step = now + STEP
            game.render(screen, font, clock)
            pygame.display.flip()
            game.resolve_snapshots(screen)
            clock.tick()  # measures the frame; with no frame rate, it never sleeps
            game.work_ms = (time.monotonic() - started) * 1000
            next_frame += 1.0 / game.fps
            if next_frame < time.monotonic():  # a late frame is not made up for: start afresh
                next_frame = time.monotonic()
            serve_until(server, next_frame, stopping)
    finally:
        server.close()
        pygame.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
