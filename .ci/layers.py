#!/usr/bin/env python3
"""Checks volguard's module layering: each module of src/ may import only from its own
layer or the layers below it, and the modules of one layer must not import each other in
a circle. Prints every upward import and every circle; exits 1 if there is any.

Usage: python3 .ci/layers.py [--report]   (--report: print, but always exit 0)
"""
import os
import re
import sys

# Layers from the top down; a module is named by its path under src/ (first segment, or
# two for the sub-layers named here). Longest prefix wins.
LAYERS = [
    ["cli"],
    ["agent"],
    ["context"],
    ["config"],
    ["ops", "watch"],
    ["docker", "fsmeta"],
    ["repo"],
    ["repo::format"],
    ["backend"],
    ["error", "fmt", "hooks", "http", "ids", "output", "pathglob", "paths", "secrets"],
]
# Units whose own submodules are checked as separate nodes for circles.
SPLIT = {"ops"}

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel)


def layer_of(mod):
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + "::")) and (best is None or len(n) > best[1]):
                best = (i, len(n))
    return None if best is None else best[0]


def node_of(mod):
    parts = mod.split("::")
    if parts[0] in SPLIT and len(parts) > 1:
        return "::".join(parts[:2])
    if mod.startswith("repo::format"):
        return "repo::format"
    return parts[0]


def imports(text):
    """Crate-relative paths a file names: `crate::a::b` and `use crate::{a::b, c}`."""
    text = re.sub(r"//[^\n]*", "", text)
    out = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_$])crate::(\{|" + IDENT + r"(?:::" + IDENT + r")*)", text):
        if m.group(1) == "{":
            depth, i = 1, m.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            for item in re.findall(r"(?:^|[,{]\s*)(" + IDENT + r"(?:::" + IDENT + r")*)", text[m.end():i - 1]):
                out.add(item)
        else:
            out.add(m.group(1))
    return out


def main():
    report_only = "--report" in sys.argv
    edges = {}
    problems = []
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs") or f in ("lib.rs", "main.rs"):
                continue
            path = os.path.join(root, f)
            mod = module_of(path)
            src_layer = layer_of(mod)
            if src_layer is None:
                problems.append(f"{mod}: not in any layer of .ci/layers.py")
                continue
            for imp in imports(open(path).read()):
                target = imp
                dst_layer = layer_of(target)
                if dst_layer is None:
                    continue
                if dst_layer < src_layer:
                    problems.append(f"upward: {mod} imports crate::{imp}")
                a, b = node_of(mod), node_of(target)
                if a != b and dst_layer == src_layer:
                    edges.setdefault(a, set()).add(b)
    # Circles among the modules of one layer.
    seen, stack, on = set(), [], set()

    def visit(n):
        seen.add(n)
        stack.append(n)
        on.add(n)
        for m in sorted(edges.get(n, ())):
            if m in on:
                problems.append("circle: " + " -> ".join(stack[stack.index(m):] + [m]))
            elif m not in seen:
                visit(m)
        stack.pop()
        on.discard(n)

    for n in sorted(edges):
        if n not in seen:
            visit(n)
    for p in sorted(set(problems)):
        print(p)
    print(f"{len(set(problems))} layering problem(s)")
    return 0 if report_only or not problems else 1


sys.exit(main())
