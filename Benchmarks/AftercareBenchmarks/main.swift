// Benchmarks are added with the capabilities they measure.
print("aftercare-bench: no benchmarks yet")
