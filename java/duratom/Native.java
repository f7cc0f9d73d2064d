package duratom;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.net.URL;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;

/**
 * The one door between the JVM and duratom's Rust storage engine
 * (rust/jni.rs implements these methods). Nothing else calls native code.
 *
 * Stores are named by handles: numbers into a table the library owns. A closed
 * or unknown handle throws IllegalStateException; it cannot crash the JVM.
 * Values and configuration cross as UTF-8 bytes.
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

    /** Pass as {@code expected} to {@link #commit}: write only if nothing is stored. */
    public static final byte[] EXPECT_NOTHING = new byte[0];

    /** Opens a store; {@code config} is UTF-8 "key NUL value NUL ..." with a "backend" key. */
    public static native long open(byte[] config);

    /** {value, version} as stored now, or null when nothing is stored. */
    public static native byte[][] load(long handle);

    /**
     * Durably stores the first {@code length} bytes of the concatenation of
     * {@code chunks} (an encoder's chunks cross without being joined or trimmed);
     * returns the new version. {@code expected}: null writes unconditionally,
     * {@link #EXPECT_NOTHING} only if nothing is stored, a version only if that
     * version is still stored (else ConflictException).
     */
    public static native byte[] commit(long handle, byte[][] chunks, long length, byte[] expected);

    /** Removes what is stored. */
    public static native void delete(long handle);

    /** Forgets the handle and releases its resources; harmless twice. */
    public static native void close(long handle);

    // ---------------------------------------------------------------- loading

    /** System property naming the library file to load instead of any other. */
    public static final String PATH_PROPERTY = "duratom.native.path";
    /** Environment variable with the same role (the property wins). */
    public static final String PATH_ENV = "DURATOM_NATIVE_PATH";

    static {
        load();
    }

    private static void load() {
        String override = System.getProperty(PATH_PROPERTY);
        if (override == null || override.isEmpty()) override = System.getenv(PATH_ENV);
        if (override != null && !override.isEmpty()) {
            System.load(new File(override).getAbsolutePath());
            return;
        }
        File built = builtInCheckout();
        if (built != null) {
            System.load(built.getAbsolutePath());
            return;
        }
        loadFromJar();
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
     * target/classes, not from a jar), the library cargo built next to it.
     */
    private static File builtInCheckout() {
        try {
            URL where = Native.class.getProtectionDomain().getCodeSource().getLocation();
            if (where == null || !"file".equals(where.getProtocol())) return null;
            File classes = new File(where.toURI());
            if (!classes.isDirectory()) return null; // a jar: use its bundled copy
            File root = classes.getParentFile() == null ? null : classes.getParentFile().getParentFile();
            if (root == null) return null;
            File lib = new File(root, "target/release/" + libraryFileName());
            return lib.isFile() ? lib : null;
        } catch (Exception e) {
            return null;
        }
    }

    private static void loadFromJar() {
        String platform = platform();
        String resource = NativePlatform.resource(platform, libraryFileName());
        try (InputStream in = Native.class.getClassLoader().getResourceAsStream(resource)) {
            if (in == null) {
                throw new UnsatisfiedLinkError(NativePlatform.noLibraryMessage(platform, System.getProperty("os.name"),
                        System.getProperty("os.arch"), NativePlatform.bundled(Native.class.getClassLoader(), libraryFileName())));
            }
            // A private file (owner-only) that nobody else can swap before we load it.
            Path temp = Files.createTempFile("duratom-", "-" + libraryFileName(),
                    PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
            try {
                Files.copy(in, temp, StandardCopyOption.REPLACE_EXISTING);
                System.load(temp.toAbsolutePath().toString());
            } finally {
                // Once loaded, the mapping stays valid after the file is gone.
                Files.deleteIfExists(temp);
            }
        } catch (IOException e) {
            throw new UnsatisfiedLinkError("duratom: cannot extract the native library " + resource + ": " + e);
        }
    }
}
