"""What 1,000 chat calls cost with the bare OpenAI SDK, no Celery and no Troupe: the floor
under the ``llm`` benchmark on this machine.

    python -m bench.llm_sdk_alone [--calls 1000] [--delay 1.0]

It starts ``bench.openai_server`` (answers after ``--delay`` s), then, in this one
process, makes ``--calls`` calls at once twice: with ``openai.OpenAI`` from a thread per
call (what a threads-pool worker does), and with ``openai.AsyncOpenAI`` under
``asyncio.gather`` on one event loop. Each way is warmed up by one full round first
(threads and connections exist). Prints one JSON line per way, in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from bench.env import ROOT

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _limits() -> httpx2.Limits:
    return httpx2.Limits(max_connections=None, max_keepalive_connections=1024)


def threads(base_url: str, calls: int) -> float:
    http = openai.DefaultHttpxClient(limits=_limits())
    client = openai.OpenAI(api_key="bench", base_url=base_url, max_retries=0, http_client=http)

    def one(_: int) -> object:
        return client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)

    with ThreadPoolExecutor(calls) as pool:
        list(pool.map(one, range(calls)))
        started = time.perf_counter()
        list(pool.map(one, range(calls)))
        return time.perf_counter() - started


async def event_loop(base_url: str, calls: int) -> float:
    http = openai.DefaultAsyncHttpxClient(limits=_limits())
    client = openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0, http_client=http)

    async def round_of_calls() -> None:
        await asyncio.gather(
            *(
                client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
                for _ in range(calls)
            )
        )

    await round_of_calls()
    started = time.perf_counter()
    await round_of_calls()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm_sdk_alone")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args(argv)
    with subprocess.Popen(
        [sys.executable, "-m", "bench.openai_server", "--delay", str(args.delay)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdout is not None and server.stdin is not None
        base_url = server.stdout.readline().strip()
        try:
            for way, seconds in (
                ("threads", threads(base_url, args.calls)),
                ("asyncio", asyncio.run(event_loop(base_url, args.calls))),
            ):
                figure = {"benchmark": "llm_sdk_alone", "way": way, "calls": args.calls}
                print(json.dumps({**figure, "delay_s": args.delay, "seconds": round(seconds, 3)}))
        finally:
            server.stdin.close()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
