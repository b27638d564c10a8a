"""Checks the flood's kept log files (oldest first on the command line): every line whole
JSON, no (worker, count) chatter line twice, none missing between each worker's first and
last line kept; prints the counts and the byte rate the workers wrote at."""
import json
import sys

seconds = float(sys.argv[1])
seen, spans, line_bytes, bad = set(), {}, 0, 0
for name in sys.argv[2:]:
    with open(name, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        bad += 1
    for raw in data.splitlines():
        try:
            fields = json.loads(raw)["fields"]
        except (ValueError, KeyError):
            bad += 1
            continue
        message, worker = fields.get("message", ""), fields.get("worker")
        if worker is None or "count=" not in message:
            continue
        count = int(message.rsplit("count=", 1)[1])
        if (worker, count) in seen:
            bad += 1
        seen.add((worker, count))
        low, high = spans.get(worker, (count, count))
        spans[worker] = (min(low, count), max(high, count))
        line_bytes += len(raw) + 1
missing = sum(high - low + 1 for low, high in spans.values()) - len(seen)
written = sum(high for _, high in spans.values())
rate = written * (line_bytes / max(len(seen), 1)) / seconds / 1e6
print(f"{len(seen)} lines kept, {missing} missing between the first and last kept, "
      f"{bad} cut or twice; the workers wrote {written} lines, about {rate:.1f} MB/s")
