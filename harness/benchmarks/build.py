"""Build benchmark: harness overhead, warm-ccache rebuild and no-op rebuild, measured in one run.

    python -m harness.benchmarks.build [--arch amd64] [--variant smoke]

1. plain   `make -jN` of the variant's resolved config in a fresh build dir (empty ccache)
2. harness the harness's whole build (source check, tree, config, audit, make, manifest) in a fresh
           build dir (another empty ccache): overhead = harness / plain - 1, target <= 2 %
3. warm    the harness build again in a fresh build dir with the ccache of (2): target <= 20 % of (2)
4. no-op   the harness build again on (3)'s build dir, nothing changed: target <= 10 s
Both cold builds use ccache the same way so that only the harness differs between them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import proc
from harness.arch import get_arch
from harness.errors import BuildFailed, HarnessError
from harness.kernel import build, kconfig, source, tree
from harness.kernel.patches import Series
from harness.layout import cache_root
from harness.progress import Timer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--variant", default="smoke")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    arch, variant = get_arch(args.arch), kconfig.get_variant(args.variant)
    # Same depth under the cache as the real build dirs, so ccache's base-dir rewriting applies.
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=cache_root() / "build"))
    logs = scratch / "logs"
    logs.mkdir()
    figures: dict[str, float] = {}
    try:
        pin = source.Pin.load()
        src = source.resolve(pin, log=logs / "source.log")
        src_tree = tree.prepare(src, Series.load(), log=logs / "unpack.log")
        config = kconfig.resolve(src_tree, arch, variant, log=logs / "config.log")

        # 1. plain make
        plain_dir = scratch / "plain"
        plain_dir.mkdir()
        shutil.copy(config, plain_dir / ".config")
        req = build.BuildRequest(arch=arch, variant=variant, out_dir=scratch / "out-plain", jobs=args.jobs,
                                 build_dir=plain_dir)
        env = {**os.environ, **build.make_env(), "CCACHE_DIR": str(scratch / "ccache-plain")}
        argv = build.build_argv(req, arch.image_target, "modules")
        print(f"[1/4] plain: {' '.join(argv)}", flush=True)
        with Timer() as plain, open(logs / "plain.log", "w") as fh:
            rc = subprocess.run(argv, cwd=src_tree, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise BuildFailed(f"plain make exited {rc}: {proc.first_error(logs / 'plain.log')}",
                              step="bench-plain", log=logs / "plain.log")
        figures["plain"] = plain.duration

        def harness_build(name: str, ccache_dir: str, build_dir: Path) -> float:
            os.environ["CCACHE_DIR"] = ccache_dir
            r = build.BuildRequest(arch=arch, variant=variant, out_dir=scratch / f"out-{name}", jobs=args.jobs,
                                   build_dir=build_dir)
            with Timer() as t:
                build.build(r)
            return t.duration

        print("[2/4] harness, cold ccache", flush=True)
        figures["harness"] = harness_build("cold", str(scratch / "ccache-harness"), scratch / "cold")
        print("[3/4] harness, fresh build dir, warm ccache", flush=True)
        figures["warm"] = harness_build("warm", str(scratch / "ccache-harness"), scratch / "warm")
        print("[4/4] harness, no-op rebuild", flush=True)
        figures["noop"] = harness_build("warm", str(scratch / "ccache-harness"), scratch / "warm")
    except HarnessError as exc:
        print(f"error: {exc} (build directories kept in {scratch})", file=sys.stderr)
        return 2
    shutil.rmtree(scratch, ignore_errors=True)
    overhead = figures["harness"] / figures["plain"] - 1
    warm = figures["warm"] / figures["harness"]
    print(f"\nbuild benchmark: {arch.name}/{variant.name}, make -j{args.jobs}")
    print(f"  plain make (cold)          {figures['plain']:8.1f} s   baseline")
    print(f"  harness build (cold)       {figures['harness']:8.1f} s   overhead {overhead:+.1%}  (target <= +2%)"
          f"  {'OK' if overhead <= 0.02 else 'OVER'}")
    print(f"  fresh dir, warm ccache     {figures['warm']:8.1f} s   {warm:.1%} of cold  (target <= 20%)"
          f"  {'OK' if warm <= 0.20 else 'OVER'}")
    print(f"  no-op rebuild              {figures['noop']:8.1f} s   (target <= 10 s)"
          f"  {'OK' if figures['noop'] <= 10 else 'OVER'}")
    return 0 if overhead <= 0.02 and warm <= 0.20 and figures["noop"] <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
