"""`python -m nanollm.serve`: serve one model over the OpenAI HTTP API until SIGTERM or Ctrl-C.

    python -m nanollm.serve --model DIR_OR_HUB_NAME [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "DIR_OR_HUB_NAME", "prompt": "Once upon a time", "max_tokens": 20}'

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")   # any key when the server has none
    client.chat.completions.create(model="DIR_OR_HUB_NAME", messages=[{"role": "user", "content": "Hi"}])

The model is loaded as `python -m nanollm.generate` loads it (no --model: GPT-2 from the cache or the hub, else the
demo model inside nanollm). Errors before serving (a bad flag, a missing model, a port in use) print one line and
exit 1; SIGTERM or SIGINT stops accepting, lets the requests in flight finish, and exits 0.
"""
import argparse
import ipaddress
import signal
import sys
import threading
import warnings

from ..loader import DEFAULT_REPO, DEMO_MODEL, default_backend, default_model_path, load
from ..memory import keep_freed_memory
from ..paged_cache import block_bytes
from ..paged_runner import PagedRunner
from .scheduler import BLOCK_SIZE
from .server import SHUTDOWN_GRACE_S, Server


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """One line and exit status 2, instead of argparse's usage block (as nanollm.generate)."""
        self.exit(2, f"error: {message} (see --help)\n")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv):
    p = ArgumentParser(prog="python -m nanollm.serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a model directory with tokenizer files, or a hub name "
                                   "(default: GPT-2 from the cache or the hub, else the demo model)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the name clients send as `model` (default: --model as given), as vLLM's flag")
    p.add_argument("--backend", help="cpu (the default where a C++ compiler builds its kernels, else numpy), "
                                     "numpy (the reference), cupy (a GPU) or emulator")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine "
                                                       "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port (printed)")
    p.add_argument("--api-key", metavar="KEY", help="require `Authorization: Bearer KEY` on every /v1/ request")
    p.add_argument("--max-batch", type=positive, default=8, help="requests running at once (default 8)")
    p.add_argument("--max-queue", type=positive, default=64,
                   help="requests waiting for a place in the batch; beyond it a request gets 429 (default 64)")
    p.add_argument("--kv-blocks", type=positive, metavar="N",
                   help=f"blocks of {BLOCK_SIZE} tokens in the paged KV cache, shared by every running request "
                        f"(default: max-batch full contexts, at most 2 GiB, at least one full context)")
    return p.parse_args(argv)


def model_name(args, path) -> str:
    if args.served_model_name is not None:
        return args.served_model_name
    if args.model is not None:
        return args.model
    return "demo_model" if path == DEMO_MODEL else DEFAULT_REPO


def open_to_network(host: str) -> bool:
    """Whether `host` listens beyond this machine (anything but a loopback address or localhost)."""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # the program owns the process's allocator: freed arrays stay warm for the next pass
    try:
        path = args.model if args.model is not None else default_model_path()
        with warnings.catch_warnings(record=True) as caught:  # e.g. an EOS id outside the vocabulary, ignored
            warnings.simplefilter("always")
            model = load(path, backend=args.backend or default_backend())
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        runner = None if args.kv_blocks is None else PagedRunner(model, args.kv_blocks, BLOCK_SIZE)
        server = Server(model, model_name(args, path), args.host, args.port, args.api_key, args.max_batch,
                        args.max_queue, runner)
    except (OSError, ValueError, ImportError, RuntimeError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)  # a traceback would bury the one line that says what is wrong
        return 1
    if args.api_key is None and open_to_network(args.host):
        print(f"warning: listening on {args.host} without --api-key: anyone who reaches this port can use the model",
              file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    pool = server.scheduler.runner.stats().total
    print(f"nanollm.serve: serving {server.name!r} at http://{args.host}:{server.port}/v1 (batch of "
          f"{args.max_batch}, queue of {args.max_queue}, KV pool of {pool} blocks: "
          f"{pool * block_bytes(model.config, BLOCK_SIZE) / 2**20:.0f} MiB); SIGTERM or Ctrl-C stops", file=sys.stderr,
          flush=True)
    while not stop.wait(1.0):
        pass
    print(f"nanollm.serve: shutting down (requests in flight get up to {SHUTDOWN_GRACE_S:g} s to finish)",
          file=sys.stderr, flush=True)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
