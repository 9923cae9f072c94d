"""Spins for argv[1] ms, sleeps argv[2] ms, forever: intermittent load on one core, as a noisy host gives."""
import time, sys
on, off = float(sys.argv[1]) / 1e3, float(sys.argv[2]) / 1e3
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < on: pass
    time.sleep(off)
