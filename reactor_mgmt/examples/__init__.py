"""Runnable examples: one per kind of host loop. Run any of them with
``python -m reactor_mgmt.examples.NAME [--port 8123] [--address-file PATH]`` and talk to it with
``nc -N 127.0.0.1 8123`` or ``python -m reactor_mgmt -c 127.0.0.1:8123 help``.

* ``select_daemon``   a legacy daemon with its own ``select.select()`` loop
* ``game_loop``       a fixed-timestep 60 Hz loop that polls with the time left in each frame
* ``asyncio_service`` an asyncio service using ``server.attach_asyncio()``
* ``tk_app``          a tkinter window that polls from ``after()``
* ``sleep_worker``    a worker loop paced by ``time.sleep``
* ``node_port``       a one-to-one port of a Node.js management-socket example (``reactor_mgmt.start``)

Each exits with status 0 on SIGTERM or Ctrl-C.
"""
