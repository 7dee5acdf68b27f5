"""Reads Kubernetes manifests as a YAML parser does, for tests/deploy.rs (Rust has no YAML crate
here; PyYAML comes with kubernetes-validate).

Usage: k8s_manifests.py FILE...

Prints {"<file name>": [document, ...], ...} as JSON: every non-empty document of every file,
in order, with its values typed as YAML reads them (so a quoted "5000" stays a string).
"""

import json
import os
import sys

import yaml

out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        out[os.path.basename(path)] = [d for d in yaml.safe_load_all(f) if d is not None]
json.dump(out, sys.stdout)
