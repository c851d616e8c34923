"""``familiar local up | down | status | logs``: the embedded llama-server."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

Command = Callable[[argparse.Namespace], int]


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def local_command(action: str) -> Command:
    def run(args: argparse.Namespace) -> int:
        from familiar.cli import signals
        from familiar.config.workspace import find_workspace, state_home
        from familiar.local import DEFAULT_CACHE_RAM_MIB, LocalServer

        home = state_home(find_workspace(args.workspace))
        cache_ram = getattr(args, "cache_ram", None)
        server = LocalServer(
            home,
            seats=getattr(args, "seats", 4),
            threads=getattr(args, "threads", None),
            cache_ram_mib=DEFAULT_CACHE_RAM_MIB if cache_ram is None else cache_ram,
        )
        if action == "up":
            info = signals.run(server.ensure_running())
            print(
                f"llama-server up at {info.address} (model {info.model_name}, "
                f"{info.seats} seats, pid {info.pid})"
            )
        elif action == "down":
            stopped = signals.run(server.stop())
            print("stopped" if stopped else "not running")
        elif action == "status":
            st = server.status()
            as_json = getattr(args, "json", False)
            if st is None:
                print(json.dumps({"running": False}) if as_json else "not running")
                return 1
            import time

            from familiar.local import rss_bytes

            rss = rss_bytes(st.pid)
            uptime = max(0.0, time.time() - st.started_at)
            facts = {
                "running": True,
                "address": st.address,
                "model": st.model_name,
                "model_path": str(st.model),
                "seats": st.seats,
                "pid": st.pid,
                "threads": st.threads or None,
                "cache_ram_mib": st.cache_ram_mib,
                "rss_bytes": rss,
                "uptime_s": round(uptime, 1),
                "state_dir": str(server.dir),
            }
            if as_json:
                print(json.dumps(facts))
            else:
                memory = "?" if rss is None else f"{rss / 2**20:.0f} MiB"
                cache = "?" if st.cache_ram_mib is None else f"{st.cache_ram_mib} MiB"
                print(
                    f"{st.address}  model {st.model_name}  seats {st.seats}"
                    f"  threads {st.threads or '?'}  memory {memory} (prompt cache cap"
                    f" {cache})  up {_uptime(uptime)}  pid {st.pid}  state {server.dir}"
                )
        else:
            for line in server.log_tail(args.lines):
                print(line)
        return 0

    return run
