"""tools.img: what ships with the exact kernel (perf, headers, kheaders), built and inspected."""
