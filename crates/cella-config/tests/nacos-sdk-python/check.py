"""Nacos's own Python SDK (nacos-sdk-python 0.1.x, HTTP mode) against a Cella node.

Usage: python check.py HOST:PORT   (with `pip install "nacos-sdk-python<1"` in the venv)
Publishes, reads, watches (long-polling listener) and removes a config through the SDK, and
exits non-zero on the first mismatch.
"""
import sys
import threading
import time

import nacos

addr = sys.argv[1]
client = nacos.NacosClient(addr, namespace="")
client.set_options(pulling_timeout=3)
data_id, group = "py-app.properties", "DEFAULT_GROUP"

assert client.publish_config(data_id, group, "a=1\n", config_type="properties"), "publish 1"
got = client.get_config(data_id, group, no_snapshot=True)
assert got == "a=1\n", f"get after publish: {got!r}"

seen = []
changed = threading.Event()

def on_change(event):
    seen.append(event.get("content"))
    if event.get("content") == "a=2\n":
        changed.set()

client.add_config_watcher(data_id, group, on_change)
time.sleep(1.5)
assert client.publish_config(data_id, group, "a=2\n", config_type="properties"), "publish 2"
assert changed.wait(15), f"watcher saw {seen!r}, not the new content"

assert client.remove_config(data_id, group), "remove"
assert client.get_config(data_id, group, no_snapshot=True) is None, "gone after remove"
print("nacos-sdk-python against Cella: publish, get, watch, remove OK")
client.remove_config_watcher(data_id, group, on_change, remove_all=True)
sys.exit(0)
