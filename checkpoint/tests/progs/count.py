# Test program: a Python counter with some heap state; prints "N ok" or "N BAD".
import sys, time
data = {}
n = 0
while True:
    n += 1
    data[n] = str(n) * 10
    ok = len(data) == n and all(data[k] == str(k) * 10 for k in range(max(1, n - 50), n + 1))
    print(n, "ok" if ok else "BAD", flush=True)
    time.sleep(0.02)
