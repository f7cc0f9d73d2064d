package duratom;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URL;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.UUID;

/**
 * The one boundary between the JVM and duratom's Rust storage engine
 * (rust/jni.rs implements these methods). Nothing else calls native code.
 *
 * Stores are named by handles: numbers into a table the library owns. A closed
 * or unknown handle throws IllegalStateException; it cannot crash the JVM.
 * Everything crosses as byte arrays, never as JNI strings: the configuration
 * as UTF-8 EDN text, values as the bytes the codec made.
 */
public final class Native {
    private Native() {}

    /** A storage operation failed; the message names the backend and resource. */
    public static class StorageException extends RuntimeException {
        public StorageException(String message) { super(message); }
    }

    /** A conditional commit found another version stored; nothing was written. */
    public static final class ConflictException extends StorageException {
        public ConflictException(String message) { super(message); }
    }

    /**
     * A commit was sent and no answer came (timeout, lost connection): it may
     * or may not have been stored. Reading the store tells which.
     */
    public static final class OutcomeUnknownException extends StorageException {
        public OutcomeUnknownException(String message) { super(message); }
    }

    /** Pass as {@code expected} to {@link #commit}: write only if nothing is stored. */
    public static final byte[] EXPECT_NOTHING = new byte[0];

    /**
     * Opens a store; {@code config} is the UTF-8 text of one EDN map with keyword keys and a
     * {@code :backend}, e.g. {@code {:backend :local-file :path "/tmp/s.edn"}} (rust/config.rs).
     * An unusable configuration, or a key the backend does not read, throws IllegalArgumentException.
     */
    public static native long open(byte[] config);

    /** {value, version} as stored now, or null when nothing is stored. */
    public static native byte[][] load(long handle);

    /**
     * Durably stores the first {@code length} bytes of the concatenation of
     * {@code chunks} (an encoder's chunks cross without being joined or trimmed);
     * returns the new version. {@code expected}: null writes unconditionally,
     * {@link #EXPECT_NOTHING} only if nothing is stored, a version only if that
     * version is still stored (else ConflictException). {@code lastSeen}, for an
     * unconditional write: the version the caller last saw (null: none), which
     * a store that numbers its states (the file header) counts on from.
     */
    public static native byte[] commit(long handle, byte[][] chunks, long length, byte[] expected, byte[] lastSeen);

    /**
     * Durably appends the first {@code length} bytes of the concatenation of
     * {@code chunks} as one change record (log mode) to the state stored as
     * version {@code after}; returns the new version. ConflictException when
     * another version is stored, or the store cannot append to it.
     */
    public static native byte[] append(long handle, byte[][] chunks, long length, byte[] after);

    /** Removes what is stored. */
    public static native void delete(long handle);

    /** Forgets the handle and releases its resources; harmless twice. */
    public static native void close(long handle);

    /** The native-interface fingerprint the loaded library was built with (ASCII hex; see build.rs). */
    public static native byte[] fingerprint();

    // ------------------------------------------------ the native-interface check

    /**
     * The crate version the native-interface fingerprint includes; it must equal the version in
     * Cargo.toml, which build.rs checks.
     */
    static final String CRATE_VERSION = "0.1.0";

    /** Where the library was loaded from, for error messages. */
    private static String loadedFrom = "(not loaded)";

    /**
     * The fingerprint a library matching this class carries: FNV-1a (64 bits) of this
     * class's native signatures and {@link #CRATE_VERSION}, computed exactly as
     * rust/build/native_abi.rs computes it from the source (each method {@code name(type,type)type}
     * with simple type names, sorted, joined by ';', then '|' and the version).
     */
    public static String expectedFingerprint() {
        List<String> signatures = new ArrayList<>();
        for (Method m : Native.class.getDeclaredMethods()) {
            if (!Modifier.isNative(m.getModifiers())) continue;
            StringBuilder s = new StringBuilder(m.getName()).append('(');
            Class<?>[] params = m.getParameterTypes();
            for (int i = 0; i < params.length; i++) {
                if (i > 0) s.append(',');
                s.append(params[i].getSimpleName());
            }
            signatures.add(s.append(')').append(m.getReturnType().getSimpleName()).toString());
        }
        Collections.sort(signatures);
        byte[] text = (String.join(";", signatures) + "|" + CRATE_VERSION).getBytes(StandardCharsets.UTF_8);
        long hash = 0xcbf29ce484222325L;
        for (byte b : text) {
            hash ^= (b & 0xff);
            hash *= 0x100000001b3L;
        }
        return String.format("%016x", hash);
    }

    /** Where the loaded library came from. */
    public static String loadedFrom() {
        return loadedFrom;
    }

    /**
     * The error for a library whose fingerprint is {@code found} (null: it has none) where
     * this class expects {@code expected}; null when they match.
     */
    public static UnsatisfiedLinkError fingerprintMismatch(String where, String found, String expected) {
        if (expected.equals(found)) return null;
        String fix = " Rebuild it (`cargo build --release` in this checkout, or scripts/build-native), or point "
                + PATH_PROPERTY + " / " + PATH_ENV + " at a library from the same build as these classes.";
        if (found == null) {
            return new UnsatisfiedLinkError("duratom: the native library " + where
                    + " carries no native-interface fingerprint (expected " + expected
                    + "): it comes from an older or foreign build." + fix);
        }
        return new UnsatisfiedLinkError("duratom: the native library " + where + " has native-interface fingerprint "
                + found + " but this duratom.Native expects " + expected
                + ": the library comes from another build (other native methods or another version)." + fix);
    }

    /** Checks the loaded library's fingerprint against this class's; throws on a mismatch. */
    private static void checkFingerprint() {
        String found;
        try {
            found = new String(fingerprint(), StandardCharsets.US_ASCII);
        } catch (UnsatisfiedLinkError e) {
            found = null;
        }
        UnsatisfiedLinkError mismatch = fingerprintMismatch(loadedFrom, found, expectedFingerprint());
        if (mismatch != null) throw mismatch;
    }

    // ---------------------------------------------------------------- loading

    /** System property naming the library file to load instead of any other. */
    public static final String PATH_PROPERTY = "duratom.native.path";
    /** Environment variable with the same role (the property wins). */
    public static final String PATH_ENV = "DURATOM_NATIVE_PATH";

    /**
     * The error that stopped the library from loading, or null once it loaded. The
     * static initializer records it instead of throwing: a class whose initializer
     * threw is unusable for the rest of the JVM's life, and every later use would
     * see only "NoClassDefFoundError: Could not initialize class duratom.Native".
     */
    private static volatile UnsatisfiedLinkError loadFailure;

    static {
        try {
            load();
            checkFingerprint();
        } catch (UnsatisfiedLinkError e) {
            loadFailure = e;
        } catch (IllegalCallerException e) {
            loadFailure = nativeAccessRefused(e);
        } catch (RuntimeException e) {
            loadFailure = (UnsatisfiedLinkError) new UnsatisfiedLinkError(
                    "duratom: cannot load the native library " + loadedFrom + ": " + e).initCause(e);
        }
    }

    /**
     * Returns when the native library is loaded; otherwise throws, on every call, an
     * UnsatisfiedLinkError with the reason it did not load (and what to change).
     * Callers run this before their first native call.
     */
    public static void ensureLoaded() {
        UnsatisfiedLinkError failure = loadFailure;
        if (failure != null) {
            // A fresh error each time, so that its stack shows this caller.
            throw (UnsatisfiedLinkError) new UnsatisfiedLinkError(failure.getMessage()).initCause(failure);
        }
    }

    /** The flag value that grants native access to the code this class is part of. */
    static String nativeAccessTarget() {
        Module module = Native.class.getModule();
        return module.isNamed() ? module.getName() : "ALL-UNNAMED";
    }

    /**
     * The error for a JVM that refuses native access (Java 24 and later with
     * --illegal-native-access=deny, or a later default): it names the flag to add.
     */
    static UnsatisfiedLinkError nativeAccessRefused(IllegalCallerException e) {
        String flag = "--enable-native-access=" + nativeAccessTarget();
        return (UnsatisfiedLinkError) new UnsatisfiedLinkError(
                "duratom: this JVM refuses native access to duratom, so it cannot load its native library "
                + loadedFrom + ". Start the JVM with " + flag
                + " (Leiningen: :jvm-opts [\"" + flag + "\"]; deps.edn: :jvm-opts in an alias;"
                + " an executable jar: the manifest line \"Enable-Native-Access: " + nativeAccessTarget() + "\")."
                + " The JVM said: " + e.getMessage()).initCause(e);
    }

    /** System property naming the directory the jar's library is extracted to (default java.io.tmpdir). */
    public static final String TMPDIR_PROPERTY = "duratom.native.tmpdir";
    /** Environment variable with the same role (the property wins). */
    public static final String TMPDIR_ENV = "DURATOM_NATIVE_TMPDIR";

    /**
     * The value of a setting given as a system property or an environment variable
     * (the property wins): {value, "the system property NAME"}, or null when neither is set.
     */
    static String[] setting(String property, String env) {
        String value = System.getProperty(property);
        if (value != null && !value.isEmpty()) return new String[] {value, "the system property " + property};
        value = System.getenv(env);
        if (value != null && !value.isEmpty()) return new String[] {value, "the environment variable " + env};
        return null;
    }

    private static void load() {
        String[] override = setting(PATH_PROPERTY, PATH_ENV);
        if (override != null) {
            loadOverride(new File(override[0]).getAbsoluteFile(), override[1]);
            return;
        }
        File built = builtInCheckout();
        if (built != null) {
            loadedFrom = built.getAbsolutePath() + " (built in this checkout)";
            System.load(built.getAbsolutePath());
            return;
        }
        loadFromJar();
    }

    /** Loads the file an override names; its errors name the override. */
    private static void loadOverride(File file, String source) {
        String name = source.substring(source.lastIndexOf(' ') + 1);
        loadedFrom = file + " (named by " + name + ")";
        String fix = " Point " + source + " at the library scripts/build-native built, or unset it to use"
                + " the library in the jar.";
        if (!file.exists()) {
            throw new UnsatisfiedLinkError("duratom: the native library " + file + ", named by " + source
                    + ", does not exist." + fix);
        }
        if (!file.isFile()) {
            throw new UnsatisfiedLinkError("duratom: the native library " + file + ", named by " + source
                    + ", is not a file." + fix);
        }
        try {
            System.load(file.getPath());
        } catch (UnsatisfiedLinkError e) {
            throw (UnsatisfiedLinkError) new UnsatisfiedLinkError("duratom: cannot load the native library "
                    + file + ", named by " + source + ": " + e.getMessage() + "." + fix).initCause(e);
        }
    }

    private static String libraryFileName() {
        return System.mapLibraryName("duratom");
    }

    /** Platform folder inside the jar, e.g. linux-x86_64 (see NativePlatform). */
    static String platform() {
        return NativePlatform.current();
    }

    /**
     * When this class was compiled in a checkout (loaded from a directory such as
     * target/jvm/classes, not from a jar), the library cargo built there: the
     * checkout is the nearest directory above the classes that holds Cargo.toml.
     */
    private static File builtInCheckout() {
        try {
            URL where = Native.class.getProtectionDomain().getCodeSource().getLocation();
            if (where == null || !"file".equals(where.getProtocol())) return null;
            File classes = new File(where.toURI());
            if (!classes.isDirectory()) return null; // a jar: use its bundled copy
            // Looked for upwards, not at a fixed depth: Leiningen's :target-path
            // decides how deep the classes sit.
            for (File dir = classes.getParentFile(); dir != null; dir = dir.getParentFile()) {
                if (new File(dir, "Cargo.toml").isFile()) {
                    File lib = new File(dir, "target/release/" + libraryFileName());
                    return lib.isFile() ? lib : null;
                }
            }
            return null;
        } catch (Exception e) {
            return null;
        }
    }

    private static void loadFromJar() {
        String platform = platform();
        String resource = NativePlatform.resource(platform, libraryFileName());
        try (InputStream in = Native.class.getClassLoader().getResourceAsStream(resource)) {
            if (in == null) {
                String os = System.getProperty("os.name");
                throw new UnsatisfiedLinkError(NativePlatform.noLibraryMessage(platform, os, System.getProperty("os.arch"),
                        platform.startsWith("linux") ? NativePlatform.libc() : null,
                        NativePlatform.bundled(Native.class.getClassLoader(), libraryFileName())));
            }
            loadedFrom = "resource " + resource + " of " + Native.class.getProtectionDomain().getCodeSource().getLocation();
            String[] chosen = setting(TMPDIR_PROPERTY, TMPDIR_ENV);
            String dirSource = chosen != null ? chosen[1] : "java.io.tmpdir (the default; " + TMPDIR_PROPERTY
                    + " or " + TMPDIR_ENV + " chooses another)";
            File dir = new File(chosen != null ? chosen[0] : System.getProperty("java.io.tmpdir")).getAbsoluteFile();
            try {
                Files.createDirectories(dir.toPath());
            } catch (IOException e) {
                throw new UnsatisfiedLinkError("duratom: cannot create " + dir + ", the directory for the native library"
                        + " (chosen by " + dirSource + "): " + e);
            }
            // Windows cannot delete a loaded DLL: the copy stays, under a name of its
            // own with a lock file held while this JVM lives, and a later start
            // removes the copies whose lock is free.
            boolean keep = libraryFileName().endsWith(".dll");
            Path temp;
            try {
                if (keep) {
                    removeStaleCopies(dir.toPath());
                    temp = extractLocked(in, dir.toPath());
                } else {
                    temp = createPrivateFile(dir.toPath(), libraryFileName());
                    Files.copy(in, temp, StandardCopyOption.REPLACE_EXISTING);
                }
            } catch (IOException e) {
                throw new UnsatisfiedLinkError("duratom: cannot extract the native library " + resource + " to " + dir
                        + " (chosen by " + dirSource + "): " + e + ". Set " + TMPDIR_PROPERTY + " (or " + TMPDIR_ENV
                        + ") to a writable directory.");
            }
            try {
                System.load(temp.toAbsolutePath().toString());
            } catch (UnsatisfiedLinkError e) {
                throw (UnsatisfiedLinkError) new UnsatisfiedLinkError(extractedLoadFailure(e.getMessage(), dir, dirSource))
                        .initCause(e);
            } finally {
                // Once loaded, the mapping stays valid after the file is gone.
                if (!keep) Files.deleteIfExists(temp);
            }
        } catch (IOException e) {
            throw new UnsatisfiedLinkError("duratom: cannot extract the native library " + resource + ": " + e);
        }
    }

    /** Prefix of the copies {@link #extractLocked} makes; the version and native-interface fingerprint tell builds apart. */
    public static String copyPrefix() {
        return "duratom-" + CRATE_VERSION + "-" + expectedFingerprint() + "-";
    }

    /** Suffix of a copy's lock file: {@code <copy>.lck}. */
    static final String LOCK_SUFFIX = ".lck";

    /** The lock this JVM holds on its copy's lock file, for as long as it lives. */
    private static FileLock copyLock;

    /**
     * Copies {@code in} to a new file {@code duratom-<version>-<fingerprint>-<random>.dll} in
     * {@code dir} and returns it, after creating and locking {@code <that name>.lck}: the lock
     * stays held until this JVM exits, and tells {@link #removeStaleCopies} the copy is in use.
     */
    public static synchronized Path extractLocked(InputStream in, Path dir) throws IOException {
        String name = copyPrefix() + UUID.randomUUID() + ".dll";
        Path lockFile = dir.resolve(name + LOCK_SUFFIX);
        FileChannel channel = FileChannel.open(lockFile, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
        copyLock = channel.lock();
        Path copy = dir.resolve(name);
        Files.copy(in, copy);
        return copy;
    }

    /**
     * Removes from {@code dir} the copies of duratom's library (any version) that no live JVM
     * uses: those whose lock file can be locked now, and those without a lock file (the lock
     * file is made first, so its copy is left from a crash or a clean-up). A copy that is
     * loaded all the same cannot be deleted on Windows and stays. Returns the removed copies.
     */
    public static List<Path> removeStaleCopies(Path dir) {
        List<Path> removed = new ArrayList<>();
        File[] files = dir.toFile().listFiles();
        if (files == null) return removed;
        for (File f : files) {
            String name = f.getName();
            if (!name.startsWith("duratom-") || !name.endsWith(".dll")) continue;
            Path copy = f.toPath();
            Path lockFile = dir.resolve(name + LOCK_SUFFIX);
            try {
                if (!Files.exists(lockFile)) {
                    if (Files.deleteIfExists(copy)) removed.add(copy);
                    continue;
                }
                try (FileChannel channel = FileChannel.open(lockFile, StandardOpenOption.WRITE)) {
                    FileLock lock;
                    try {
                        lock = channel.tryLock();
                    } catch (OverlappingFileLockException e) {
                        lock = null; // this JVM's own copy
                    }
                    if (lock == null) continue;
                    try {
                        if (Files.deleteIfExists(copy)) removed.add(copy);
                    } finally {
                        lock.release();
                    }
                }
                Files.deleteIfExists(lockFile);
            } catch (IOException e) {
                // In use or not ours to remove: a later start tries again.
            }
        }
        return removed;
    }

    /** An empty file in {@code dir} that only this user can read or write, so nobody can swap it before it loads. */
    private static Path createPrivateFile(Path dir, String libraryFile) throws IOException {
        if (dir.getFileSystem().supportedFileAttributeViews().contains("posix")) {
            return Files.createTempFile(dir, "duratom-", "-" + libraryFile,
                    PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
        }
        return Files.createTempFile(dir, "duratom-", "-" + libraryFile);
    }

    /**
     * The error text for a library extracted to {@code dir} that the system would not load:
     * it names the directory, what chose it, and the setting that moves it. A file system
     * mounted {@code noexec} makes the dynamic loader fail to map the file.
     */
    static String extractedLoadFailure(String systemMessage, File dir, String dirSource) {
        String move = "set the system property " + TMPDIR_PROPERTY + " (or the environment variable " + TMPDIR_ENV
                + ") to a directory on a file system that allows it.";
        if (systemMessage != null && systemMessage.contains("failed to map segment")) {
            return "duratom: cannot load the native library extracted to " + dir + " (chosen by " + dirSource
                    + "): its file system does not allow running code from it (mounted noexec?); " + move
                    + " The system said: " + systemMessage + " (the extracted copy is removed).";
        }
        return "duratom: cannot load the native library extracted to " + dir + " (chosen by " + dirSource + "): "
                + systemMessage + " (the extracted copy is removed). If that directory does not allow loading code, "
                + move;
    }
}
