package duratom;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;

/**
 * Which bundled native library fits this JVM: the platform names of the jar's
 * resource folders {@code duratom/native/<platform>/} and the mapping from the
 * JVM's {@code os.name} / {@code os.arch} (and on Linux its C library) to them. Kept apart from
 * {@link Native} so that it can be used (and tested) without loading the
 * library.
 */
public final class NativePlatform {
    private NativePlatform() {}

    /** Folder of the bundled libraries inside the jar. */
    public static final String RESOURCE_ROOT = "duratom/native/";
    /**
     * Optional index the build writes next to the platform folders, one
     * platform name per line. It lets an error name platforms beyond
     * {@link #KNOWN}; every name is checked against the jar anyway.
     */
    public static final String INDEX = RESOURCE_ROOT + "platforms.txt";
    /** The platforms a release jar carries (scripts/release builds them). */
    public static final List<String> KNOWN =
        List.of("linux-x86_64", "linux-aarch64", "linux-musl-x86_64", "linux-musl-aarch64",
                "windows-x86_64", "windows-aarch64", "macos-aarch64", "macos-x86_64");

    /** The platform of this JVM, from its system properties and, on Linux, its C library. */
    public static String current() {
        String os = System.getProperty("os.name");
        return of(os, System.getProperty("os.arch"), isLinux(os) ? libc() : null);
    }

    private static boolean isLinux(String osName) {
        return osName != null && osName.trim().toLowerCase(Locale.ROOT).startsWith("linux");
    }

    private static volatile String libc;

    /**
     * The C library this process runs on, "musl" or "glibc", read from its own
     * mappings (/proc/self/maps); "unknown" when they cannot be read or name
     * neither. Not from the files on disk: a glibc system can have the musl
     * loader installed, and an Alpine one glibc's compatibility files.
     */
    public static String libc() {
        String known = libc;
        if (known == null) {
            String maps;
            try {
                maps = new String(Files.readAllBytes(Paths.get("/proc/self/maps")), StandardCharsets.UTF_8);
            } catch (IOException | RuntimeException e) {
                maps = "";
            }
            libc = known = libcOf(maps);
        }
        return known;
    }

    /**
     * The C library that mappings in the format of /proc/PID/maps show: "musl"
     * when the musl loader/libc (ld-musl-ARCH.so.1, Alpine's libc.musl-ARCH.so.1)
     * is mapped, else "glibc" when glibc's libc (libc.so.6, libc-2.NN.so) is,
     * else "unknown". musl wins, since glibc compatibility layers on musl
     * (Alpine's gcompat) map files with glibc's names. Pure.
     */
    public static String libcOf(String maps) {
        boolean glibc = false;
        for (String line : maps.split("\n")) {
            int slash = line.lastIndexOf('/');
            if (slash < 0) continue;
            String file = line.substring(slash + 1).trim();
            if (file.startsWith("ld-musl-") || file.startsWith("libc.musl-")) return "musl";
            if (file.equals("libc.so.6") || file.matches("libc-2\\.[0-9]+\\.so")) glibc = true;
        }
        return glibc ? "glibc" : "unknown";
    }

    /** {@link #of(String, String, String)} for a platform whose C library does not matter (glibc on Linux). */
    public static String of(String osName, String osArch) {
        return of(osName, osArch, null);
    }

    /**
     * The platform name for values of {@code os.name} and {@code os.arch}:
     * {@code <os>-<arch>}, with every spelling of one platform mapped to one
     * name (Linux; "Mac OS X", macOS and Darwin; amd64, x86_64 and x64;
     * aarch64 and arm64). An OS or architecture it does not know keeps its own
     * name, lower-cased, with everything but letters, digits and '_' dropped,
     * so that an error can say which platform it saw ("freebsd-x86_64",
     * "linux-ppc64le"). On Linux, {@code libc} "musl" gives {@code linux-musl-<arch>};
     * any other value (glibc, unknown, null) the glibc name {@code linux-<arch>}.
     * Pure: reads no system property.
     */
    public static String of(String osName, String osArch, String libc) {
        String os = osName == null ? "" : osName.trim().toLowerCase(Locale.ROOT);
        String arch = osArch == null ? "" : osArch.trim().toLowerCase(Locale.ROOT);
        if (os.startsWith("linux")) os = "linux";
        else if (os.startsWith("mac") || os.startsWith("darwin") || os.equals("osx")) os = "macos";
        else if (os.startsWith("windows")) os = "windows";
        else os = os.replaceAll("[^a-z0-9_]", "");
        switch (arch) {
            case "amd64": case "x86_64": case "x86-64": case "x64": case "em64t":
                arch = "x86_64"; break;
            case "aarch64": case "arm64": case "aarch_64": case "armv8":
                arch = "aarch64"; break;
            case "x86": case "i386": case "i486": case "i586": case "i686":
                arch = "x86"; break;
            default:
                arch = arch.replaceAll("[^a-z0-9_]", "");
        }
        if (os.equals("linux") && "musl".equals(libc)) os = "linux-musl";
        return (os.isEmpty() ? "unknown" : os) + "-" + (arch.isEmpty() ? "unknown" : arch);
    }

    /** The resource path of {@code platform}'s library, e.g. duratom/native/linux-x86_64/libduratom.so. */
    public static String resource(String platform, String libraryFile) {
        return RESOURCE_ROOT + platform + "/" + libraryFile;
    }

    /**
     * The platforms whose library file {@code loader} finds: the known ones
     * and those in the build's index, each listed only if its file is there.
     */
    public static List<String> bundled(ClassLoader loader, String libraryFile) {
        LinkedHashSet<String> names = new LinkedHashSet<>(KNOWN);
        try (InputStream index = loader.getResourceAsStream(INDEX)) {
            if (index != null) {
                for (String line : new String(index.readAllBytes(), StandardCharsets.UTF_8).split("\\R")) {
                    if (!line.trim().isEmpty()) names.add(line.trim());
                }
            }
        } catch (IOException e) {
            // An unreadable index only shortens the list in an error message.
        }
        List<String> found = new ArrayList<>();
        for (String name : names) {
            if (loader.getResource(resource(name, libraryFile)) != null) found.add(name);
        }
        return found;
    }

    /** The error text for a jar that has no library for {@code platform}. */
    public static String noLibraryMessage(String platform, String osName, String osArch, String libc,
                                          List<String> bundled) {
        return "duratom: this jar has no native library for platform " + platform
            + " (os.name=\"" + osName + "\", os.arch=\"" + osArch + "\""
            + (libc == null ? "" : ", C library " + libc) + "); it carries "
            + (bundled.isEmpty() ? "none" : String.join(", ", bundled))
            + ". To run here, build the library on this machine with scripts/build-native (in a duratom"
            + " checkout) and set the system property " + Native.PATH_PROPERTY + " or the environment variable "
            + Native.PATH_ENV + " to the file it built.";
    }
}
