//! Keeps the process's secrets out of `/proc/PID/environ`, which any process of the same user can
//! read (a test on an agent, say): the kernel shows there the environment block the process
//! started with, so every variable is copied to the heap and the block is zeroed, before any
//! other thread exists. The variables themselves stay as they were for this process.

unsafe extern "C" {
    static mut environ: *const *const libc::c_char;
}

/// Copies every variable out of the original environment block and zeroes that block.
///
/// # Safety
/// Must be called before any other thread starts (the environment is changed under no lock any
/// other code would take).
pub unsafe fn scrub() {
    // SAFETY: the caller guarantees no other thread reads or writes the environment now.
    unsafe {
        let original: Vec<*const libc::c_char> = {
            let mut v = vec![];
            let mut p = environ;
            while !p.is_null() && !(*p).is_null() {
                v.push(*p);
                p = p.add(1);
            }
            v
        };
        // Re-set each variable: setenv stores a copy on the heap and points `environ` at it.
        for (key, value) in std::env::vars_os() {
            std::env::set_var(&key, &value);
        }
        for s in original {
            let len = libc::strlen(s);
            std::ptr::write_bytes(s as *mut u8, 0, len);
        }
    }
}
