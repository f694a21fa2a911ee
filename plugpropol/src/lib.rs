//! PlugProPol: probes, filters, scheduling policies and the configfs-style tree.
