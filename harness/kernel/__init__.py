"""The kernel: verified sources, the patch series, patched trees, configs and their audit, the build."""
