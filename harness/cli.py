"""Command-line entry point: ``python -m harness <command> ...`` (what the nox sessions call)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from harness.arch import ARCHES, Arch, get_arch
from harness.errors import HarnessError
from harness.layout import default_out_dir, out_root

LOG = logging.getLogger("harness")


def _arch_out(args: argparse.Namespace, arch: Arch, variant: str = "production") -> Path:
    return Path(args.out) if getattr(args, "out", None) else default_out_dir(arch.name, variant)


def cmd_build(args: argparse.Namespace) -> int:
    from harness.kernel import build, kconfig, source

    arch = get_arch(args.arch)
    variant = kconfig.get_variant(args.variant)
    provider, path = args.source, None
    if provider and provider not in source.PROVIDERS:
        provider, path = "local", Path(provider)
    req = build.BuildRequest(arch=arch, variant=variant, out_dir=_arch_out(args, arch, variant.name),
                             version=args.kernel_version, provider=provider, source_path=path,
                             sha256=args.sha256, suffix=args.suffix, jobs=args.jobs,
                             use_ccache=not args.no_ccache)
    manifest = build.build(req)
    print(f"built {manifest['kernelrelease']} -> {req.out_dir}")
    if args.tools:
        from harness.tools import image as toolsimage

        img = toolsimage.build_tools_image(arch, req.out_dir, jobs=args.jobs)
        print(f"tools image -> {img}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from harness.kernel import configs

    return configs.update(arches=[get_arch(a) for a in args.arch or ARCHES])


def cmd_audit(args: argparse.Namespace) -> int:
    from harness.kernel import configs

    return configs.audit_committed(arches=[get_arch(a) for a in args.arch or ARCHES])


def cmd_upgrade(args: argparse.Namespace) -> int:
    from harness.kernel import configs

    return configs.upgrade(args.version, debian_version=args.debian_version, sha256=args.sha256,
                           allow_downgrade=args.allow_downgrade, dry_run=args.dry_run, interactive=args.interactive)


def cmd_tools(args: argparse.Namespace) -> int:
    from harness.tools import image as toolsimage

    arch = get_arch(args.arch)
    img = toolsimage.build_tools_image(arch, _arch_out(args, arch, args.variant), jobs=args.jobs)
    print(f"tools image -> {img}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from harness.errors import InvalidArgument
    from harness.tools import inspect

    if args.out and len(args.arch) > 1:
        raise InvalidArgument("--out names one output directory: give only one arch with it", step="inspect-tools")
    items = [(get_arch(a), Path(args.out) if args.out else default_out_dir(get_arch(a).name, args.variant))
             for a in args.arch]
    return 0 if inspect.inspect_images(items) else 1


def cmd_boot_test(args: argparse.Namespace) -> int:
    from harness.boot import run as boottest

    arch = get_arch(args.arch)
    ok = boottest.boot_test(arch, _arch_out(args, arch, args.variant), dry_run=args.dry_run, accel=args.accel,
                            require_tools=args.require_tools, only=args.only or None, soak=args.soak,
                            acpi_override=args.acpi_override)
    return 0 if ok else 1


def cmd_release(args: argparse.Namespace) -> int:
    from harness import release

    return release.run(arches=[get_arch(a) for a in args.arch or ARCHES], variant=args.variant,
                       jobs=args.jobs)


def cmd_oci(args: argparse.Namespace) -> int:
    from harness import oci

    arches = [get_arch(a) for a in args.arch or ARCHES]
    dest = Path(args.dest) if args.dest else out_root() / "oci" / args.variant
    layout = oci.write_layout([(a, default_out_dir(a.name, args.variant)) for a in arches], dest,
                              log=dest.parent / f"{dest.name}.log")
    oci.inspect(layout, log=dest.parent / f"{dest.name}.log")
    print(f"OCI layout -> {dest}: {layout.tag} ({', '.join(layout.images)}) index {layout.index.digest}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from harness import oci, release

    layout = Path(args.layout) if args.layout else out_root() / "release" / "oci"
    if not args.unverified:
        release.require_passed(layout.parent)
    log = (layout.parent / "logs" / "publish.log") if not args.layout else layout.parent / "publish.log"
    digest = oci.publish(layout, args.reference, log=log)
    print(f"published {args.reference} -> index {digest}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from harness import reproduce

    return reproduce.run(get_arch(args.arch), variant=args.variant, jobs=args.jobs, keep=args.keep)


def cmd_compare_config(args: argparse.Namespace) -> int:
    from harness.kernel import compareconfig

    return compareconfig.run(args.arch, args.reference, tree=Path(args.tree) if args.tree else None,
                             allow_unexplained=args.allow_unexplained,
                             json_path=Path(args.json) if args.json else None,
                             contract_path=Path(args.contract) if args.contract else None)


def cmd_set_config(args: argparse.Namespace) -> int:
    from harness.kernel import configs

    if args.arch != "all":
        get_arch(args.arch)
    return configs.set_config(args.arch, args.options, dry_run=args.dry_run)


def cmd_menuconfig(args: argparse.Namespace) -> int:
    from harness.kernel import configs

    return configs.menuconfig(args.arch, tool=args.tool, dry_run=args.dry_run)


def cmd_compute_test(args: argparse.Namespace) -> int:
    from harness.compute import run as compute

    arch = get_arch(args.arch)
    ok = True
    for kernel in compute.KERNELS if args.kernel == "both" else (args.kernel,):
        ok = compute.compute_test(arch, _arch_out(args, arch), kernel=kernel, accel=args.accel) and ok
    return 0 if ok else 1


def cmd_config_drift(args: argparse.Namespace) -> int:
    from harness.kernel import configs

    return configs.drift(json_path=Path(args.json) if args.json else None)


def parser() -> argparse.ArgumentParser:
    from harness.kernel import source  # its providers, for --source

    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log every command")
    sub = p.add_subparsers(dest="command", required=True)
    jobs = os.cpu_count() or 1

    b = sub.add_parser("build", help="build a kernel (source, patches, config, audit, make, manifest)")
    b.add_argument("--arch", required=True, help=" or ".join(ARCHES))
    b.add_argument("--variant", default="production", help="configs/variants.toml entry (default: production)")
    b.add_argument("--source", help=f"a source provider ({', '.join(source.PROVIDERS)}) or a path to a local "
                   "tarball (default: the pin's provider)")
    b.add_argument("--sha256", help="expected sha256 of a kernel.org or local tarball")
    b.add_argument("--kernel-version", help="kernel version (default: the pinned one)")
    b.add_argument("--suffix", help="version suffix, EXTRAVERSION; write it as --suffix=-rc1 "
                   "(default: the variant's, e.g. -neonvm)")
    b.add_argument("--out", help="output directory (default: out/<arch> or out/<variant>-<arch>)")
    b.add_argument("-j", "--jobs", type=int, default=jobs)
    b.add_argument("--no-ccache", action="store_true", help="do not use ccache even when installed")
    b.add_argument("--tools", action="store_true", help="also build tools.img")
    b.set_defaults(func=cmd_build)

    c = sub.add_parser("update-configs", help="re-resolve the committed per-arch configs and show what changed")
    c.add_argument("arch", nargs="*")
    c.set_defaults(func=cmd_configs)

    a = sub.add_parser("audit", help="audit the committed configs against the fragments")
    a.add_argument("arch", nargs="*")
    a.set_defaults(func=cmd_audit)

    u = sub.add_parser("upgrade", help="move the pin to a new kernel version and show the config changes")
    u.add_argument("version")
    u.add_argument("--debian-version", help="the linux-source package version that ships it")
    u.add_argument("--sha256", help="sha256 of the kernel.org tarball of that version")
    u.add_argument("--dry-run", action="store_true",
                   help="report patches, new symbols, config diffs and file changes; write nothing")
    u.add_argument("--allow-downgrade", action="store_true", help="accept a version not newer than the pin")
    u.add_argument("--interactive", action="store_true",
                   help="answer the new version's Kconfig questions (make oldconfig); answers go into the fragments")
    u.set_defaults(func=cmd_upgrade)

    t = sub.add_parser("tools", help="build tools.img for a built kernel")
    t.add_argument("--arch", required=True)
    t.add_argument("--variant", default="production")
    t.add_argument("--out")
    t.add_argument("-j", "--jobs", type=int, default=jobs)
    t.set_defaults(func=cmd_tools)

    i = sub.add_parser("inspect-tools", help="inspect tools.img with libguestfs")
    i.add_argument("arch", nargs="+")
    i.add_argument("--variant", default="production")
    i.add_argument("--out", help="output directory (only with one arch)")
    i.set_defaults(func=cmd_inspect)

    bt = sub.add_parser("boot-test", help="boot a built kernel under QEMU and run the checks")
    bt.add_argument("arch")
    bt.add_argument("--variant", default="production")
    bt.add_argument("--out")
    bt.add_argument("--dry-run", action="store_true", help="print the QEMU command line and exit")
    bt.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    bt.add_argument("--require-tools", action="store_true", help="fail (not skip) when tools.img is missing")
    bt.add_argument("--only", nargs="*", help="run only these checks (opt-in checks, e.g. hotplug-faults, run "
                    "only when named here)")
    bt.add_argument("--soak", type=int, default=1, help="repeat the memory-stress rounds N times (default 1)")
    bt.add_argument("--no-acpi-override", dest="acpi_override", action="store_false",
                    help="under TCG, boot with QEMU's own ACPI tables (cpu-qmp is then skipped on Linux >= 6.9) "
                    "instead of online-capable FACP/APIC from an early initrd cpio")
    bt.set_defaults(func=cmd_boot_test)

    r = sub.add_parser("release", help="build, verify and package every arch; exit non-zero on any failure")
    r.add_argument("arch", nargs="*")
    r.add_argument("--variant", default="production")
    r.add_argument("-j", "--jobs", type=int, default=jobs)
    r.set_defaults(func=cmd_release)

    o = sub.add_parser("oci", help="write the OCI image layout (one image per arch + index) of built kernels "
                       "(the release gate does this as its oci step)")
    o.add_argument("arch", nargs="*")
    o.add_argument("--variant", default="production")
    o.add_argument("--dest", help="layout directory (default: out/oci/<variant>)")
    o.set_defaults(func=cmd_oci)

    pb = sub.add_parser("publish", help="push the release's OCI index and images to a registry (skopeo copy --all); "
                        "credentials from NEONVM_REGISTRY_USER / NEONVM_REGISTRY_PASSWORD")
    pb.add_argument("reference", help="REGISTRY/REPOSITORY[:TAG] (TAG defaults to the kernel release)")
    pb.add_argument("--layout", help="OCI layout to push (default: out/release/oci, written by the release gate)")
    pb.add_argument("--unverified", action="store_true",
                    help="push a layout without the release gate's passing verdict (release.json) beside it")
    pb.set_defaults(func=cmd_publish)

    rp = sub.add_parser("reproduce", help="build one arch twice in fresh build directories (ccache off) and "
                        "compare kernel, tools.img, release tar and OCI layout byte for byte")
    rp.add_argument("arch")
    rp.add_argument("--variant", default="production")
    rp.add_argument("-j", "--jobs", type=int, default=jobs)
    rp.add_argument("--keep", action="store_true", help="keep the two build directories")
    rp.set_defaults(func=cmd_reproduce)

    cc = sub.add_parser("compare-config", help="compare the production config with a reference config, "
                        "each difference explained by the fragments, the contract or Kconfig")
    cc.add_argument("arch")
    cc.add_argument("reference", help="the reference .config (NeonVM's, Debian's /boot/config-*, ...)")
    cc.add_argument("--tree", help="an unpacked kernel tree to read Kconfig from (default: the pinned source)")
    cc.add_argument("--contract", help="the capability contract (default: configs/contract.toml)")
    cc.add_argument("--json", metavar="PATH", help="also write the full result as JSON")
    cc.add_argument("--allow-unexplained", action="store_true",
                    help="exit 0 even when options the reference enables are unexplained")
    cc.set_defaults(func=cmd_compare_config)

    sc = sub.add_parser("set-config", help="set options in the production config: the change goes into the "
                        "fragments, is re-resolved, audited (refused with its root cause if Kconfig cannot honour "
                        "it) and shown as a diff")
    sc.add_argument("arch", help="amd64, arm64, or all")
    sc.add_argument("options", nargs="+", metavar="CONFIG_X=VALUE")
    sc.add_argument("--dry-run", action="store_true", help="show the fragment lines and the diff, write nothing")
    sc.set_defaults(func=cmd_set_config)

    for tool in ("menuconfig", "nconfig"):
        mc = sub.add_parser(tool, help=f"make {tool} on the committed production config; what you change and "
                            "save goes into the fragments (through set-config)")
        mc.add_argument("arch")
        mc.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
        mc.set_defaults(func=cmd_menuconfig, tool=tool)

    ct = sub.add_parser("compute-test", help="boot a Debian guest with Postgres on the built kernel, with the "
                        "VM runner's disks and devices, and check it as NeonVM operates it")
    ct.add_argument("arch")
    ct.add_argument("--out", help="the build's OUT directory (default out/ARCH, the production kernel)")
    ct.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    ct.add_argument("--kernel", default="ours", choices=("ours", "debian-cloud", "both"),
                    help="the kernel built in OUT (default), Debian's cloud kernel from the guest image (the "
                    "kernel a user would pick instead), or both, one after the other")
    ct.set_defaults(func=cmd_compute_test)

    cd = sub.add_parser("config-drift", help="options the amd64 and arm64 production configs set differently, "
                        "each requested per arch by a fragment line or unexplained (exit 1)")
    cd.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    cd.set_defaults(func=cmd_config_drift)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.func(args)
        return rc
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # full disk, permissions: still one line, not a traceback
        print(f"error: [{args.command}] {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130

