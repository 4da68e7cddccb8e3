"""tools.img: what ships with the exact kernel (perf, headers, kheaders), built and inspected.

* :mod:`.spec` - the image's contract (label, partition table, paths, file kinds, the listing format),
  defined once for the builder, the inspection and the guest check;
* :mod:`.kbuild` - the kernel build the image is for (OUT/manifest.json) and ``make`` in it;
* :mod:`.perf` - the static perf build (and the private sysroot of a cross build);
* :mod:`.staging` - the tree laid out like an installed root, and reading it back in order;
* :mod:`.disk` - ext4 sizing, mkfs/debugfs, the GPT (sfdisk), all on regular files;
* :mod:`.image` - the orchestration: ``build_tools_image`` and ``package``;
* :mod:`.inspect` - the image checks in one libguestfs appliance;
* :mod:`.elf` - the minimal ELF reader (also used by the boot test and the foreign packages).
"""
