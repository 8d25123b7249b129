//! Links the C++ runtime. RocksDB (through backbone-registry's dependencies) is C++, and
//! librocksdb-sys adds libstdc++ only when it compiles RocksDB itself, not when it links a
//! prebuilt library (`ROCKSDB_LIB_DIR`, which saves a long build on small machines); the
//! fuzz targets get it from libFuzzer anyway, the `seeds` writer would not.

fn main() {
    println!("cargo:rustc-link-lib=stdc++");
}
