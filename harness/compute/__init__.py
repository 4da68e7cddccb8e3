"""The compute guest: a Debian root image with Postgres, booted the way the NeonVM runner boots a
compute (its disks, devices, kernel command line and CPU/memory shape), and the checks NeonVM's
operations imply. ``python -m harness.compute.run ARCH``; details in docs/compute.md."""
