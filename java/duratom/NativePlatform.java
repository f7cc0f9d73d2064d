package duratom;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;

/**
 * Which bundled native library fits this JVM: the platform names of the jar's
 * resource folders {@code duratom/native/<platform>/} and the mapping from the
 * JVM's {@code os.name} / {@code os.arch} to them. Kept apart from
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
        List.of("linux-x86_64", "linux-aarch64", "macos-aarch64", "macos-x86_64");

    /** The platform of this JVM, from its system properties. */
    public static String current() {
        return of(System.getProperty("os.name"), System.getProperty("os.arch"));
    }

    /**
     * The platform name for values of {@code os.name} and {@code os.arch}:
     * {@code <os>-<arch>}, with every spelling of one platform mapped to one
     * name (Linux; "Mac OS X", macOS and Darwin; amd64, x86_64 and x64;
     * aarch64 and arm64). An OS or architecture it does not know keeps its own
     * name, lower-cased, with everything but letters, digits and '_' dropped,
     * so that an error can say which platform it saw ("freebsd-x86_64",
     * "linux-ppc64le"). Pure: reads no system property.
     */
    public static String of(String osName, String osArch) {
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
    public static String noLibraryMessage(String platform, String osName, String osArch, List<String> bundled) {
        return "duratom: this jar has no native library for platform " + platform
            + " (os.name=\"" + osName + "\", os.arch=\"" + osArch + "\"); it carries "
            + (bundled.isEmpty() ? "none" : String.join(", ", bundled))
            + ". To run here, build the library on this machine with scripts/build-native (in a duratom"
            + " checkout) and set the system property " + Native.PATH_PROPERTY + " or the environment variable "
            + Native.PATH_ENV + " to the file it built.";
    }
}
