"""``compare-config`` against the real thing: this host's Debian kernel config, the committed production
config and the real pinned tree (unpacked by the harness, as the CLI does), its Kconfig evaluated by
kconfiglib. Facts checked through the contract, the fragments and the Kconfig themselves, never through
counts that depend on their content."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kconfiglib
import pytest

from harness.arch import get_arch
from harness.kernel import compareconfig as cc
from harness.kernel import contract, kconfig
from harness.layout import REPO

pytestmark = pytest.mark.integration
AMD64 = get_arch("amd64")


def _debian_config() -> Path | None:
    own = Path(f"/boot/config-{os.uname().release}")
    if own.is_file():
        return own
    found = sorted(Path("/boot").glob("config-*"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ref = _debian_config()
    if ref is None:
        pytest.skip("no Debian kernel config in /boot (config-*)")
    tmp = tmp_path_factory.mktemp("compare")
    contract_path = contract.CONTRACT
    if not contract_path.is_file():  # the contract is being written: run with an empty one
        contract_path = tmp / "contract.toml"
        contract_path.write_text("")
    out = tmp / "compare.json"
    cmd = [sys.executable, "-m", "harness", "compare-config", "amd64", str(ref), "--allow-unexplained",
           "--json", str(out), "--contract", str(contract_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    ours = kconfig.parse_config_text(Path(data["ours"]).read_text())
    tree = cc.load_tree(Path(data["tree"]), AMD64)
    assert tree.load_values(ours) == []  # the committed config is what its Kconfig resolves
    return {"data": data, "stdout": proc.stdout, "cmd": cmd, "contract": contract.load(contract_path),
            "by": {d["option"]: d for d in data["differences"]}, "ref": ref,
            "requests": kconfig.get_variant("production").requests(AMD64), "ours": ours, "tree": tree}


def test_thousands_of_options_classified(compared: dict[str, Any]) -> None:
    data = compared["data"]
    assert len(data["differences"]) > 1000
    counts = data["counts"]
    assert sum(counts.values()) == len(data["differences"])
    assert all(counts[c] > 0 for c in ("requested", "hardware", "y-vs-m")), counts
    summary = [line for line in compared["stdout"].splitlines() if line.startswith("summary: amd64: ")]
    assert len(summary) == 1 and f"{len(data['differences'])} option(s) differ" in summary[0]
    assert compared["tree"].size > 10000  # the whole x86 Kconfig, through `source`
    assert f"; {compared['tree'].size} Kconfig symbols)" in compared["stdout"].splitlines()[1]


def test_every_class_agrees_with_the_fragments_the_contract_and_the_kconfig(compared: dict[str, Any]) -> None:
    con, requests, tree = compared["contract"], compared["requests"], compared["tree"]
    policy = 0
    for d in compared["data"]["differences"]:
        opt = d["option"]
        if d["class"] == "y-vs-m":
            assert {d["ours"], d["reference"]} == {"y", "m"}, d
            continue
        req = requests.get(opt)
        om = con.omission(opt, "amd64")
        sym = tree.symbol(opt)
        if req is not None:
            assert (d["class"], d["request"]) == ("requested", req.where), d
        elif om is not None and d["direction"] != "ours-enables" and not (d["direction"] == "choice"
                                                                          and d["ours"] != "n"):
            assert (d["class"], d["omission"]) == ("omitted" if om.kind == "policy" else "hardware", om.name), d
            policy += om.kind == "policy"
        elif d["via"]:
            _check_chain(d, con, requests, tree)
            policy += d["class"] == "omitted"
        elif d["class"] == "unexplained":
            assert sym is not None and tree.prompted(sym), d  # a real choice, nobody explains
        else:
            assert d["class"] == "hardware" and (sym is None or not tree.prompted(sym)), d
    assert (compared["data"]["counts"]["omitted"] > 0) == (policy > 0)


def _in(sym: kconfiglib.Symbol, expr: kconfiglib.Expr) -> bool:
    return sym in kconfiglib.expr_items(expr)


def _check_chain(d: dict[str, Any], con: contract.Contract, requests: dict[str, kconfig.Request],
                 tree: cc.KconfigTree) -> None:
    """An inherited explanation: each link a symbol of the dependencies of the one before (its own
    depends on, an enclosing block's, or its prompt's if) with that relation, off in ours; the root
    matched by the omission named, switched off by the fragment line named, or absent from this arch."""
    assert d["ours"] == "n" and d["direction"] != "ours-enables", d
    child = tree.symbol(d["option"])
    assert child is not None, d
    for i, link in enumerate(d["via"]):
        parent = tree.kconf.syms[link["option"].removeprefix("CONFIG_")]
        assert parent.tri_value == 0, (d, link)
        if link["relation"] == cc.PROMPT_IF:
            assert any(n.prompt and _in(parent, n.prompt[1]) for n in child.nodes), (d, link)
        else:
            assert any(how == link["relation"] and _in(parent, expr)
                       for node in child.nodes for how, expr in tree.parts(node)), (d, link)
        if i < len(d["via"]) - 1:
            found = tree.symbol(link["option"])
            assert found is not None, (d, link)
            child = found
    root = d["via"][-1]["option"]
    om, req = con.omission(root, "amd64"), requests.get(root)
    if d["omission"] is not None:
        assert om is not None and om.name == d["omission"], d
        assert d["class"] == ("omitted" if om.kind == "policy" else "hardware"), d
    elif d["class"] == "requested":
        assert req is not None and req.where == d["request"] and cc.normalise(req.value) == "n", d
    else:
        assert om is None and tree.symbol(root) is None and d["class"] == "hardware", d


def test_the_exit_status_follows_the_unexplained_options_the_reference_enables(compared: dict[str, Any]) -> None:
    data = compared["data"]
    failing = [d["option"] for d in data["differences"]
               if d["class"] == "unexplained" and d["direction"] == "reference-enables"]
    assert data["failing"] == failing
    cmd = [a for a in compared["cmd"] if a != "--allow-unexplained"]
    rc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600).returncode
    assert rc == (1 if failing else 0)


def test_known_facts(compared: dict[str, Any]) -> None:
    by, ref, con = compared["by"], kconfig.parse_config_text(compared["ref"].read_text()), compared["contract"]
    tree: cc.KconfigTree = compared["tree"]
    # virtio-blk carries the root disk: when it differs from Debian's, a fragment line says why
    if "CONFIG_VIRTIO_BLK" in by:
        vb = by["CONFIG_VIRTIO_BLK"]
        assert vb["class"] in ("requested", "y-vs-m") and vb["request"].startswith("configs/fragments/")
        cap = con.requirement("CONFIG_VIRTIO_BLK", "amd64")
        assert vb["capability"] == (cap.name if cap else None)
    # Intel PCIe NIC, a module in Debian: hardware a VM does not have
    if ref.get("CONFIG_E1000E") == "m" and by.get("CONFIG_E1000E", {}).get("ours") == "n":
        assert by["CONFIG_E1000E"]["class"] in ("hardware", "omitted", "requested")
        assert by["CONFIG_E1000E"]["menu"][:2] == ["Device Drivers", "Network device support"]
    # lib/Kconfig's BTREE has no prompt: whatever selects it decides
    if ref.get("CONFIG_BTREE") == "y" and "CONFIG_BTREE" in by and con.omission("BTREE", "amd64") is None:
        assert by["CONFIG_BTREE"]["class"] == "hardware"
        assert by["CONFIG_BTREE"]["reason"].startswith("internal symbol (no prompt")
    # options Debian 6.1 had and 6.12 dropped are not in the tree at all
    gone = [d for d in by.values() if d["menu"] == [cc.NOT_IN_TREE]]
    assert all(d["class"] in ("hardware", "requested", "omitted") for d in gone)
    assert all(tree.symbol(d["option"]) is None and not tree.elsewhere(d["option"]) for d in gone)
    # menus come from the Kconfig menu tree
    menus = {name: tree.menu(sym) for name in ("NF_CONNTRACK", "BTRFS_FS", "VIRTIO_BLK")
             if (sym := tree.symbol(name)) is not None}
    assert menus == {
        "NF_CONNTRACK": ("Networking support", "Networking options", "Network packet filtering framework (Netfilter)",
                         "Core Netfilter Configuration"),
        "BTRFS_FS": ("File systems",),
        "VIRTIO_BLK": ("Device Drivers", "Block devices")}
    assert "== Device Drivers > Network device support" in compared["stdout"]
    # the netfilter options Debian enables inherit the omission of NETFILTER, through the menu's depends on
    nf = by.get("CONFIG_NF_CONNTRACK")
    om = con.omission("NETFILTER", "amd64")
    if nf is not None and nf["direction"] == "reference-enables" and om is not None and \
            con.omission("NF_CONNTRACK", "amd64") is None and "CONFIG_NF_CONNTRACK" not in compared["requests"]:
        assert nf["omission"] == om.name and nf["via"][-1]["option"] == "CONFIG_NETFILTER", nf
