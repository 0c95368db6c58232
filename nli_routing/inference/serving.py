"""Serving a routed model over HTTP with micro-batching: requests that arrive within a few milliseconds
share one forward, whatever their meta classes or routes (routing is per sample).

    nli-routing serve outputs/sci_wp_dispatch/wp-signature --port 8000      # POST /predict, GET /health
    curl -s localhost:8000/predict -d '{"premise": "Tom failed to lock the door",
                                        "hypothesis": "Tom locked the door", "signature": "-|+"}'

Each request is one pair (the predictor's fields: ``premise``, ``hypothesis``, the meta column or
``meta``); it is checked when it arrives (a bad pair gets a 400 with the one-line reason and does not
touch the others), then waits in a bounded queue. One worker takes up to ``max_batch`` waiting pairs,
waiting at most ``max_wait_ms`` for more once the first has arrived, tokenizes them in one call and
runs them in one forward (:meth:`RoutedNLIPredictor.run`). A full queue answers 503 with
``{"error": "busy: ..."}`` at once instead of growing without bound. ``max_batch=1`` serves one
request per forward (the baseline of ``benchmarks/serving.py``). With Gradio installed the app's pages
are mounted at ``/app`` (``--no_app`` leaves them out).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # (imported when a server is built: the command line's --help stays fast)
    from .predict import RoutedNLIPredictor

__all__ = ["MicroBatcher", "build_server", "main"]

logger = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full: the request is answered at once (HTTP 503), not queued."""


class MicroBatcher:
    """A bounded queue of prepared pairs and the worker that runs them in batches (see the module doc).

    ``counts``: requests served, rejected as busy, refused as bad input, and forwards run.
    """

    def __init__(self, predictor: RoutedNLIPredictor, max_batch: int = 64, max_wait_ms: float = 5.0,
                 queue_size: int = 1024) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch and queue_size must be >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{queue_size}, {max_wait_ms}")
        self.predictor = predictor
        self.max_batch, self.max_wait, self.queue_size = int(max_batch), float(max_wait_ms) / 1000.0, int(queue_size)
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.counts = {"served": 0, "busy": 0, "bad_input": 0, "forwards": 0, "batched_pairs": 0}

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.queue_size)
        self.worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()

    async def submit(self, pair: Any) -> dict[str, Any]:
        """The prediction of one pair (``ValueError``: bad input; :class:`Busy`: the queue is full)."""
        try:
            prepared = self.predictor.prepare([pair])
        except ValueError:
            self.counts["bad_input"] += 1
            raise
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((prepared, future))
        except asyncio.QueueFull:
            self.counts["busy"] += 1
            raise Busy(f"busy: {self.queue_size} requests are waiting; retry later") from None
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                try:
                    items.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = {k: [v for prepared, _ in items for v in prepared[k]] for k in ("premises", "hypotheses", "meta",
                                                                                     "sources")}
            try:
                rows = await loop.run_in_executor(None, lambda: self.predictor.run(**batch))
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error, the worker goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.counts["forwards"] += 1
            self.counts["batched_pairs"] += len(items)
            for (_, future), row in zip(items, rows):
                if not future.done():
                    future.set_result(row)
                    self.counts["served"] += 1


def build_server(model: str | Path | RoutedNLIPredictor, max_batch: int = 64, max_wait_ms: float = 5.0,
                 queue_size: int = 1024, meta_fallback: str | None = None, with_app: bool = True):
    """The FastAPI application: ``POST /predict`` (one pair -> its prediction), ``GET /health`` (the
    model and the batcher's counts), and the Gradio app at ``/app`` when Gradio is installed."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from .predict import RoutedNLIPredictor

    predictor = model if isinstance(model, RoutedNLIPredictor) else RoutedNLIPredictor.from_pretrained(model, meta_fallback)
    batcher = MicroBatcher(predictor, max_batch, max_wait_ms, queue_size)

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    api = FastAPI(title="nli_routing", lifespan=lifespan)
    api.state.batcher = batcher

    async def predict(request: Request):
        try:
            pair = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON: send one pair as a JSON object"}, status_code=400)
        try:
            return JSONResponse(await batcher.submit(pair))  # (a dict of plain values: no re-encoding pass)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except Busy as err:
            return JSONResponse({"error": str(err)}, status_code=503)

    predict.__annotations__["request"] = Request  # (this module's annotations are strings; FastAPI reads this one)
    api.post("/predict")(predict)

    @api.get("/health")
    async def health():
        return {"model": str(predictor.model.name_or_path), "meta_source": predictor.model.meta_source,
                "max_batch": batcher.max_batch, "queue": batcher.queue.qsize() if batcher.queue else 0,
                **batcher.counts}

    if with_app:
        try:
            import gradio as gr

            from .app import build_app
        except ImportError:
            logger.info("Gradio is not installed: serving the HTTP API only")
        else:
            api = gr.mount_gradio_app(api, build_app(predictor), path="/app")
    return api


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nli-routing serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv), parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved model folder or Hub id")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port")
    parser.add_argument("--max_batch", type=int, default=64, help="pairs per forward at most (1: no batching)")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="how long a batch waits for more pairs")
    parser.add_argument("--queue_size", type=int, default=1024, help="waiting requests before answering 503 busy")
    parser.add_argument("--meta_fallback", default=None, help="meta class for pairs without one (default: an error)")
    parser.add_argument("--no_app", action="store_true", help="serve the HTTP API only (no Gradio pages at /app)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> None:
    import uvicorn

    for name, low in (("port", 1), ("max_batch", 1), ("queue_size", 1)):
        if getattr(args, name) < low or (name == "port" and args.port > 65535):
            msg = f"--{name} must be {'in 1..65535' if name == 'port' else '>= 1'}, got {getattr(args, name)}"
            if parser is not None:
                parser.error(msg)
            raise ValueError(msg)
    if args.max_wait_ms < 0:
        raise ValueError(f"--max_wait_ms must be >= 0, got {args.max_wait_ms}")
    api = build_server(args.model, args.max_batch, args.max_wait_ms, args.queue_size, args.meta_fallback,
                       with_app=not args.no_app)
    uvicorn.run(api, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
