"""Verify by booting: the test initramfs, QEMU and QMP, the serial console, and the boot checks."""
