/*
 * The one table of configuration keys: name, type, default, valid range (or
 * choices) and the sentence the README prints. The code reads this table and
 * `spate conf --markdown` prints it, so the documented table cannot drift.
 *
 * SP_CONF_KEY(key, type, default, min, max, choices, description)
 */
SP_CONF_KEY("memory.executor", SP_CONF_SIZE, "0", "0", "1p", NULL,
            "Memory of one executor. 0 gives each executor 3/4 of its NUMA node's memory, "
            "shared among the executors on that node.")
SP_CONF_KEY("memory.reserved", SP_CONF_SIZE, "300m", "0", "1p", NULL,
            "Memory kept outside the unified pool for spate's own structures. Left at its default "
            "on an executor smaller than 1.5 x reserved, it shrinks to a fifth of the executor "
            "with a warning; set explicitly that large, it is an error.")
SP_CONF_KEY("memory.fraction", SP_CONF_DOUBLE, "0.6", "0.01", "1", NULL,
            "Share of (executor - reserved) that forms the unified execution/storage pool.")
SP_CONF_KEY("memory.storage_fraction", SP_CONF_DOUBLE, "0.5", "0", "1", NULL,
            "Share of the unified pool that is the storage region: cached blocks within it are "
            "never evicted for execution.")
SP_CONF_KEY("memory.page_size", SP_CONF_SIZE, "4m", "4k", "128m", NULL,
            "Default size of the execution pages records are serialized into (offsets in a page "
            "fit in 27 bits).")
SP_CONF_KEY("memory.huge_pages", SP_CONF_BOOL, "true", NULL, NULL, NULL,
            "Ask for transparent huge pages (madvise) on page allocations of 2 MiB and more: "
            "fewer first-touch faults on fresh pages (measured in docs/PERFORMANCE.md).")
SP_CONF_KEY("memory.numa_bind", SP_CONF_BOOL, "true", NULL, NULL, NULL,
            "Bind each executor's memory to its NUMA node and its threads to the node's cores.")
SP_CONF_KEY("memory.topology", SP_CONF_STRING, "", NULL, NULL, NULL,
            "Topology to plan for: empty for this machine, synthetic:DESC (hwloc synthetic "
            "description) or xml:PATH (hwloc XML export).")
SP_CONF_KEY("memory.block_dir", SP_CONF_STRING, "/tmp", NULL, NULL, NULL,
            "Directory where the block store writes cached blocks kept on disk.")
SP_CONF_KEY("executor.cores", SP_CONF_INT, "0", "0", "4096", NULL,
            "Worker threads (task slots) of an executor; 0: the cores it is given (its share "
            "of its NUMA node's cores).")
SP_CONF_KEY("executor.heartbeat_interval", SP_CONF_DURATION, "1s", "10ms", "1h", NULL,
            "How often an executor reports to the driver (and the driver pings its executors). "
            "Must be below half of executor.heartbeat_timeout.")
SP_CONF_KEY("executor.heartbeat_timeout", SP_CONF_DURATION, "30s", "100ms", "24h", NULL,
            "An executor silent for this long is declared lost: its running tasks fail (each "
            "such failure counts toward task.max_failures), and its map outputs that unfinished "
            "reduce tasks still need are recomputed.")
SP_CONF_KEY("executor.driver_timeout", SP_CONF_DURATION, "60s", "0", "24h", NULL,
            "An executor that hears nothing from its driver for this long (the driver pings "
            "every executor.heartbeat_interval) exits, even with a worker stuck in a task "
            "(0: never).")
SP_CONF_KEY("executor.max_relaunches", SP_CONF_INT, "8", "0", "65536", NULL,
            "Local mode: lost executors are started again, at most this many times in one run, "
            "so that a task that crashes its executor cannot drain the cluster.")
SP_CONF_KEY("executor.register_timeout", SP_CONF_DURATION, "60s", "100ms", "24h", NULL,
            "How long the driver waits for its executors to register.")
SP_CONF_KEY("driver.address", SP_CONF_STRING, "127.0.0.1:0", NULL, NULL, NULL,
            "HOST:PORT the driver's control plane listens on in local mode (port 0: any free "
            "port). Use a routable address only for executors on other hosts.")
SP_CONF_KEY("progress.interval", SP_CONF_DURATION, "5s", "100ms", "24h", NULL,
            "When stderr is not a terminal (batch logs, pipes), how often spate run prints a "
            "progress line for each running stage (a line also ends each stage). On a terminal "
            "the stages' lines are rewritten in place instead.")
SP_CONF_KEY("task.max_failures", SP_CONF_INT, "4", "1", "1000", NULL,
            "A task that fails this many times fails the job: an error its job code returns, "
            "its executor dying while it runs (a crash in job code), or task.timeout. A task "
            "that fails with SP_ERR_BAD_INPUT (the job's data is wrong) fails the job at once.")
SP_CONF_KEY("task.timeout", SP_CONF_DURATION, "0", "0", "24h", NULL,
            "A task attempt running longer than this fails and its executor is replaced "
            "(0: no limit).")
SP_CONF_KEY("stage.max_attempts", SP_CONF_INT, "4", "1", "100", NULL,
            "Fetch failures a reduce stage survives (each recomputes the lost map outputs) "
            "before the job fails.")
SP_CONF_KEY("offers.max_executors", SP_CONF_INT, "0", "0", "65536", NULL,
            "Mesos mode: most executors spate run launches from offers (0: as many as "
            "--executors asks for).")
SP_CONF_KEY("offers.max_cores", SP_CONF_INT, "0", "0", "1048576", NULL,
            "Mesos mode: most cpus its executors hold together, executor.cores each (0: no cap).")
SP_CONF_KEY("offers.constraints", SP_CONF_STRING, "", NULL, NULL, NULL,
            "Mesos mode: agent attributes an offer must have, as name:v1,v2;name2:v (TEXT: equal "
            "to a value; SCALAR: at least one; RANGES: contains one; SET: holds them all; a "
            "name alone: present).")
SP_CONF_KEY("offers.refuse_seconds", SP_CONF_DOUBLE, "120", "0", "31536000", NULL,
            "Mesos mode: seconds the master is asked not to offer again what spate declined "
            "(too small, constraints unmet, not needed).")
SP_CONF_KEY("mesos.role", SP_CONF_STRING, "*", NULL, NULL, NULL,
            "Mesos mode: the role the framework subscribes with.")
SP_CONF_KEY("mesos.user", SP_CONF_STRING, "", NULL, NULL, NULL,
            "Mesos mode: the user executors run as on the agents (empty: the user running "
            "spate run).")
SP_CONF_KEY("mesos.principal", SP_CONF_STRING, "", NULL, NULL, NULL,
            "Mesos mode: the framework's principal (empty: none).")
SP_CONF_KEY("mesos.failover_timeout", SP_CONF_DURATION, "2m", "0", "8760h", NULL,
            "Mesos mode: how long the master keeps the executors while spate run is "
            "disconnected from it.")
SP_CONF_KEY("mesos.connect_timeout", SP_CONF_DURATION, "30s", "100ms", "1h", NULL,
            "Mesos mode: how long spate run tries to subscribe to a master (and to find the "
            "leader in ZooKeeper) before it fails.")
SP_CONF_KEY("mesos.heartbeat_misses", SP_CONF_INT, "5", "1", "1000", NULL,
            "Mesos mode: master heartbeats missed in a row after which the subscription is "
            "made again.")
SP_CONF_KEY("shuffle.local_dirs", SP_CONF_STRING, "/tmp/spate", NULL, NULL, NULL,
            "Comma-separated directories for spill files and committed map outputs (created 0700; "
            "spills go round-robin over them).")
SP_CONF_KEY("shuffle.compress", SP_CONF_BOOL, "true", NULL, NULL, NULL,
            "Compress shuffle segments with shuffle.codec; false writes them as they are.")
SP_CONF_KEY("shuffle.codec", SP_CONF_ENUM, "lz4", NULL, NULL, "none|lz4|zstd",
            "Codec of shuffle segments (one frame per partition segment).")
SP_CONF_KEY("shuffle.codec_level", SP_CONF_INT, "1", "1", "19", NULL,
            "Compression level of zstd (ignored by the other codecs).")
SP_CONF_KEY("shuffle.checksum", SP_CONF_ENUM, "crc32c", NULL, NULL, "crc32c|xxh3",
            "Checksum of each partition segment as stored.")
SP_CONF_KEY("shuffle.bypass_threshold", SP_CONF_INT, "200", "0", "16777216", NULL,
            "Up to this many partitions, without key ordering or a combiner, a map task writes "
            "one stream per partition and concatenates them instead of sorting.")
SP_CONF_KEY("shuffle.spill_records", SP_CONF_INT, "0", "0", "2147483647", NULL,
            "Spill after this many records in memory (0: only when memory is refused).")
SP_CONF_KEY("shuffle.file_buffer", SP_CONF_SIZE, "32k", "1k", "64m", NULL,
            "Write buffer of each per-partition stream of the bypass path.")
SP_CONF_KEY("shuffle.spill_buffer", SP_CONF_SIZE, "1m", "4k", "256m", NULL,
            "Write buffer of spill and merge output.")
SP_CONF_KEY("shuffle.output", SP_CONF_ENUM, "memory", NULL, NULL, "memory|disk",
            "Where a committed map output's data lives: memory (an in-memory file held as the "
            "executor's storage memory, served and read in place, moved to disk least recently "
            "committed first when execution needs the memory; on disk from the start when "
            "storage memory is refused or the map task spilled) or disk (a file in "
            "shuffle.local_dirs).")
SP_CONF_KEY("shuffle.reduce_slowstart", SP_CONF_DOUBLE, "1", "0", "1", NULL,
            "Share of the map tasks that must have committed before reduce tasks start (Hadoop's "
            "slow start): an early reduce task fetches outputs as maps commit, in slots no "
            "pending map task needs, and gives its slot back when a map task must run again. 1: "
            "reduce tasks start when every map output is in. Two-stage jobs only (the shuffle "
            "job, version-1 plugins): a graph job's stage starts when its inputs are complete.")
SP_CONF_KEY("shuffle.sync", SP_CONF_BOOL, "false", NULL, NULL, NULL,
            "fsync committed map outputs (and their directory) before they become visible.")
SP_CONF_KEY("shuffle.max_bytes_in_flight", SP_CONF_SIZE, "48m", "64k", "64g", NULL,
            "Most bytes a reduce task has requested and not yet received; each request asks "
            "for at most a fifth of it.")
SP_CONF_KEY("shuffle.max_block_in_memory", SP_CONF_SIZE, "200m", "4k", "1t", NULL,
            "A fetched block larger than this is streamed to a temporary file in "
            "shuffle.local_dirs and read from there (blocks read in place are not copied).")
SP_CONF_KEY("transport.backend", SP_CONF_ENUM, "ofi", NULL, NULL, "ofi|mpi|local|auto",
            "Transport between executors: ofi (libfabric RDM endpoints, one-sided reads), mpi "
            "(executors are the ranks of MPI_COMM_WORLD, which open and close the transport "
            "together; see transport.mpi_mode), local (executors of one host read each other's "
            "committed files directly) or auto (mpi when the process initialized MPI and runs "
            "on more than one rank, else ofi).")
SP_CONF_KEY("transport.local", SP_CONF_BOOL, "false", NULL, NULL, NULL,
            "Read map outputs of executors on the same host (and mount namespace) straight from "
            "their committed files (in memory or on disk), and only those of the others over "
            "transport.backend. Executors of spate run and spate executor use true unless it is "
            "set; false is the default of sp_transport_open.")
SP_CONF_KEY("transport.mpi_mode", SP_CONF_ENUM, "rget", NULL, NULL, "rget|twosided",
            "How the mpi backend reads a block: rget (MPI_Rget through a dynamic window; a "
            "region the window cannot take is served twosided) or twosided (a request to the "
            "owner, answered with a send from its progress thread or its polls).")
SP_CONF_KEY("transport.ofi_mode", SP_CONF_ENUM, "auto", NULL, NULL, "auto|rma|msg",
            "How the ofi backend reads a block: rma (one-sided fi_read of the registered "
            "output), msg (a tagged request to the owner, answered with a tagged send from its "
            "progress thread or its polls; for providers without FI_RMA) or auto (rma when the "
            "provider offers FI_RMA with remote reads, else msg).")
SP_CONF_KEY("transport.register_chunk", SP_CONF_SIZE, "256m", "4k", "1t", NULL,
            "Served map outputs are mapped and registered in chunks of this many bytes (whole "
            "pages), shared by every registration of the same file; a read across chunks is "
            "split.")
SP_CONF_KEY("transport.provider", SP_CONF_STRING, "", NULL, NULL, NULL,
            "libfabric provider for the ofi backend (tcp;ofi_rxm, shm, verbs;ofi_rxm, efa); empty: "
            "FI_PROVIDER, else libfabric's first match.")
SP_CONF_KEY("transport.max_outstanding", SP_CONF_INT, "64", "1", "65536", NULL,
            "Most fetches posted and not completed on one transport.")
SP_CONF_KEY("transport.timeout", SP_CONF_DURATION, "30s", "1ms", "1h", NULL,
            "A fetch not completed after this fails with SP_ERR_TIMED_OUT naming the peer.")
SP_CONF_KEY("transport.progress_thread", SP_CONF_BOOL, "true", NULL, NULL, NULL,
            "Run a progress thread per transport, so that an executor serves one-sided reads on "
            "providers without hardware offload even while its tasks do not poll.")
