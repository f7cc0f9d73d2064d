(ns duratom.native-platform-test
  "The loader's choice of bundled library (java/duratom/NativePlatform.java):
  every os.name / os.arch spelling maps to the jar's folder names, and a JVM
  on a platform the jar does not carry gets an error naming what it saw and
  what the jar has."
  (:require [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.test-support :as ts])
  (:import (duratom Native NativePlatform)
           (java.net URLClassLoader URL)
           (java.util.jar JarEntry JarOutputStream)))

(deftest every-spelling-maps-to-one-platform
  (doseq [[os-name os-arch expected]
          [;; what JVMs report on the four platforms a release jar carries
           ["Linux" "amd64" "linux-x86_64"]
           ["Linux" "x86_64" "linux-x86_64"]
           ["Linux" "aarch64" "linux-aarch64"]
           ["Linux" "arm64" "linux-aarch64"]
           ["Mac OS X" "aarch64" "macos-aarch64"]
           ["Mac OS X" "arm64" "macos-aarch64"]
           ["Mac OS X" "x86_64" "macos-x86_64"]
           ["Mac OS X" "amd64" "macos-x86_64"]
           ["Darwin" "arm64" "macos-aarch64"]
           ["Darwin" "x86_64" "macos-x86_64"]
           ["macOS" "aarch64" "macos-aarch64"]
           ["LINUX" " AMD64 " "linux-x86_64"]
           ;; Windows, as JVMs there report it
           ["Windows 10" "amd64" "windows-x86_64"]
           ["Windows 11" "amd64" "windows-x86_64"]
           ["Windows Server 2022" "amd64" "windows-x86_64"]
           ["Windows 11" "aarch64" "windows-aarch64"]
           ["Windows 7" "x86" "windows-x86"]
           ;; platforms no jar carries keep a recognisable name for the error
           ["FreeBSD" "amd64" "freebsd-x86_64"]
           ["Linux" "ppc64le" "linux-ppc64le"]
           ["Linux" "i386" "linux-x86"]
           ["SunOS" "sparcv9" "sunos-sparcv9"]
           [nil nil "unknown-unknown"]]]
    (is (= expected (NativePlatform/of os-name os-arch)) (str os-name " / " os-arch))))

(deftest the-c-library-picks-the-musl-or-glibc-library-on-linux
  (doseq [[os-name os-arch libc expected]
          [["Linux" "amd64" "musl" "linux-musl-x86_64"]
           ["Linux" "x86_64" "musl" "linux-musl-x86_64"]
           ["Linux" "aarch64" "musl" "linux-musl-aarch64"]
           ["Linux" "arm64" "musl" "linux-musl-aarch64"]
           ["Linux" "ppc64le" "musl" "linux-musl-ppc64le"]
           ["Linux" "amd64" "glibc" "linux-x86_64"]
           ["Linux" "aarch64" "glibc" "linux-aarch64"]
           ;; mappings that name neither: glibc's name, as before the check existed
           ["Linux" "amd64" "unknown" "linux-x86_64"]
           ["Linux" "amd64" nil "linux-x86_64"]
           ;; only Linux has the two
           ["Mac OS X" "aarch64" "musl" "macos-aarch64"]
           ["Windows 10" "amd64" "musl" "windows-x86_64"]]]
    (is (= expected (NativePlatform/of os-name os-arch libc)) (str os-name " / " os-arch " / " libc))))

(deftest the-c-library-is-read-from-the-process-mappings
  (let [line (fn [path] (str "7f0c5a600000-7f0c5a628000 r--p 00000000 fe:01 1835250                    " path))]
    (testing "an Alpine JVM: musl's loader is its libc"
      (is (= "musl" (NativePlatform/libcOf (str/join "\n" [(line "/usr/lib/jvm/java-21-openjdk/bin/java")
                                                             (line "/lib/ld-musl-x86_64.so.1")
                                                             "7ffd1b9e2000-7ffd1ba03000 rw-p 00000000 00:00 0  [stack]"]))))
      (is (= "musl" (NativePlatform/libcOf (line "/lib/ld-musl-aarch64.so.1"))))
      (is (= "musl" (NativePlatform/libcOf (line "/usr/lib/libc.musl-x86_64.so.1")))))
    (testing "gcompat on Alpine maps files with glibc's names; musl still wins"
      (is (= "musl" (NativePlatform/libcOf (str/join "\n" [(line "/lib/libc.so.6") (line "/lib/ld-musl-x86_64.so.1")])))))
    (testing "a glibc JVM, with the musl loader merely installed on disk"
      (is (= "glibc" (NativePlatform/libcOf (str/join "\n" [(line "/usr/lib/x86_64-linux-gnu/libc.so.6")
                                                              (line "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")]))))
      (is (= "glibc" (NativePlatform/libcOf (line "/lib64/libc-2.17.so")))))
    (testing "neither"
      (is (= "unknown" (NativePlatform/libcOf "")))
      (is (= "unknown" (NativePlatform/libcOf (line "/usr/lib/libmusl-notes.txt")))))
    (testing "this JVM, on the glibc machines that run the test command, with /lib/ld-musl-x86_64.so.1 possibly installed"
      (is (= "glibc" (NativePlatform/libc))))))

(deftest this-jvm-maps-to-a-known-platform
  ;; The machines that run the test command are ones the jar carries.
  (is (some #{(NativePlatform/current)} (NativePlatform/KNOWN)) (NativePlatform/current)))

(defn- write-jar!
  "A jar at `file` holding `entries`, a map of path -> bytes."
  [file entries]
  (with-open [out (JarOutputStream. (io/output-stream file))]
    (doseq [[path ^bytes bytes] entries]
      (.putNextEntry out (JarEntry. ^String path))
      (.write out bytes)
      (.closeEntry out)))
  file)

(defn- class-bytes [name]
  (with-open [in (io/input-stream (io/resource (str "duratom/" name ".class")))]
    (.readAllBytes in)))

(deftest the-jar-lists-the-platforms-it-carries
  (let [dir (ts/temp-dir)
        lib (System/mapLibraryName "duratom")
        jar (write-jar! (io/file dir "two.jar")
                        {(str "duratom/native/linux-aarch64/" lib) (.getBytes "not really a library")
                         (str "duratom/native/freebsd-x86_64/" lib) (.getBytes "not really a library")
                         ;; listed but missing: not claimed
                         "duratom/native/platforms.txt" (.getBytes "linux-aarch64\nfreebsd-x86_64\nwindows-x86_64\n")})]
    (with-open [loader (URLClassLoader. (into-array URL [(.toURL (.toURI jar))]) nil)]
      (is (= ["linux-aarch64" "freebsd-x86_64"] (vec (NativePlatform/bundled loader lib)))))
    (with-open [loader (URLClassLoader. (into-array URL []) nil)]
      (is (= [] (vec (NativePlatform/bundled loader lib)))))))

(defn- child-loading-from-jar
  "Runs `code` in a child JVM whose duratom.Native comes from `jar` (first on
  the class path, so not from target/classes, and without native-resources/,
  whose platforms would count as the jar's); no DURATOM_NATIVE_PATH unless
  `env` sets it. Returns its stdout."
  [jar code & {:keys [jvm-opts env]}]
  (ts/child-output code
                   :jvm-opts (concat jvm-opts
                                     ["-cp" (str/join java.io.File/pathSeparator
                                                      (cons jar (remove #(str/ends-with? % "native-resources")
                                                                        (str/split (System/getProperty "java.class.path")
                                                                                   (re-pattern java.io.File/pathSeparator)))))])
                   :env (merge {"DURATOM_NATIVE_PATH" nil "DURATOM_NATIVE_TMPDIR" nil} env)))

(def ^:private print-load-outcome
  "Child code: loads duratom.Native and prints :loaded or the error's class and message."
  "(try (duratom.Native/ensureLoaded) (print :loaded)
        (catch Throwable e (print (.getName (class e)) (.getMessage e))))")

(deftest a-platform-the-jar-lacks-gets-an-error-naming-both
  (testing "in a child JVM that reports another architecture and loads duratom.Native from a jar"
    (let [dir (ts/temp-dir)
          lib (System/mapLibraryName "duratom")
          jar (write-jar! (io/file dir "duratom.jar")
                          {"duratom/Native.class" (class-bytes "Native")
                           "duratom/NativePlatform.class" (class-bytes "NativePlatform")
                           (str "duratom/native/linux-x86_64/" lib) (.getBytes "never loaded")
                           (str "duratom/native/macos-aarch64/" lib) (.getBytes "never loaded")})
          out (child-loading-from-jar jar print-load-outcome :jvm-opts ["-Dos.arch=ppc64le"])]
      (is (str/starts-with? out "java.lang.UnsatisfiedLinkError") out)
      (is (str/includes? out "platform linux-ppc64le") out)
      (is (str/includes? out "os.arch=\"ppc64le\", C library glibc)") out)
      (is (str/includes? out "it carries linux-x86_64, macos-aarch64.") out)
      (is (str/includes? out "duratom.native.path") out))))

(deftest an-override-that-cannot-load-names-the-override
  (let [dir (ts/temp-dir)
        missing (str (io/file dir "missing" "libduratom.so"))
        not-a-library (doto (io/file dir "libduratom.so") (spit (apply str (repeat 200 "not a library "))))]
    (testing "the system property, naming a missing file"
      (let [out (ts/child-output print-load-outcome :jvm-opts [(str "-Dduratom.native.path=" missing)])]
        (is (str/starts-with? out "java.lang.UnsatisfiedLinkError") out)
        (is (str/includes? out (str missing ", named by the system property duratom.native.path, does not exist")) out)))
    (testing "the environment variable, naming a missing file"
      (let [out (ts/child-output print-load-outcome :env {"DURATOM_NATIVE_PATH" missing})]
        (is (str/includes? out (str missing ", named by the environment variable DURATOM_NATIVE_PATH, does not exist")) out)))
    (testing "a directory"
      (let [out (ts/child-output print-load-outcome :env {"DURATOM_NATIVE_PATH" (str dir)})]
        (is (str/includes? out (str dir ", named by the environment variable DURATOM_NATIVE_PATH, is not a file")) out)))
    (testing "a file that is not a library: the system's reason and the override"
      (let [out (ts/child-output print-load-outcome :jvm-opts [(str "-Dduratom.native.path=" not-a-library)])]
        (is (str/includes? out (str "cannot load the native library " not-a-library
                                    ", named by the system property duratom.native.path: ")) out)
        (is (str/includes? out "ELF") out)))))

(defn- jar-with-this-library
  "A jar in `dir` holding duratom.Native and the library cargo built, for this platform."
  [dir]
  (let [lib (System/mapLibraryName "duratom")
        built (io/file "target/release" lib)]
    (is (.isFile built) (str built " is missing: the test command builds it (scripts/build-native)"))
    (write-jar! (io/file dir "duratom.jar")
                {"duratom/Native.class" (class-bytes "Native")
                 "duratom/NativePlatform.class" (class-bytes "NativePlatform")
                 (str "duratom/native/" (NativePlatform/current) "/" lib) (java.nio.file.Files/readAllBytes (.toPath built))})))

(defn- mount-noexec-tmpfs!
  "Mounts a small tmpfs with noexec at a fresh directory; returns it. Needs root."
  []
  (let [dir (ts/temp-dir)]
    (ts/sh! "mount" "-t" "tmpfs" "-o" "noexec,size=64m" "tmpfs" (str dir))
    dir))

(deftest the-extraction-directory-is-a-setting-and-a-noexec-one-is-named
  (let [jar (jar-with-this-library (ts/temp-dir))
        noexec (try (mount-noexec-tmpfs!)
                    (catch Exception e
                      (is false (str "this test mounts a noexec tmpfs, as root, to make a hardened host's "
                                     "java.io.tmpdir; it could not: " (.getMessage e)))
                      nil))]
    (when noexec
      (try
        (testing "java.io.tmpdir on a noexec file system: the error names the directory and the setting"
          (let [out (child-loading-from-jar jar print-load-outcome :jvm-opts [(str "-Djava.io.tmpdir=" noexec)])]
            (is (str/starts-with? out "java.lang.UnsatisfiedLinkError duratom: ") out)
            (is (str/includes? out (str "extracted to " noexec " (chosen by java.io.tmpdir")) out)
            (is (str/includes? out "noexec") out)
            (is (str/includes? out "set the system property duratom.native.tmpdir (or the environment variable DURATOM_NATIVE_TMPDIR)") out)
            (is (empty? (.list noexec)) "the extracted copy is removed")))
        (testing "duratom.native.tmpdir moves the extraction elsewhere; the directory is made if missing"
          (let [elsewhere (io/file (ts/temp-dir) "made" "here")
                out (child-loading-from-jar jar print-load-outcome
                                            :jvm-opts [(str "-Djava.io.tmpdir=" noexec)
                                                       (str "-Dduratom.native.tmpdir=" elsewhere)])]
            (is (= ":loaded" out))
            (is (empty? (.list elsewhere)) "the loaded copy is removed once mapped")))
        (testing "DURATOM_NATIVE_TMPDIR does the same"
          (let [elsewhere (ts/temp-dir)
                out (child-loading-from-jar jar print-load-outcome
                                            :jvm-opts [(str "-Djava.io.tmpdir=" noexec)]
                                            :env {"DURATOM_NATIVE_TMPDIR" (str elsewhere)})]
            (is (= ":loaded" out))))
        (testing "the setting pointing at the noexec directory is named as the chooser"
          (let [out (child-loading-from-jar jar print-load-outcome
                                            :env {"DURATOM_NATIVE_TMPDIR" (str noexec)})]
            (is (str/includes? out (str "extracted to " noexec " (chosen by the environment variable DURATOM_NATIVE_TMPDIR)")) out)))
        (finally
          (ts/sh! "umount" (str noexec)))))))

(deftest dll-copies-in-use-stay-and-stale-ones-are-removed
  ;; Windows cannot delete a loaded DLL, so there the loader keeps its copy
  ;; with a lock file locked while the JVM lives; the locking and clean-up are
  ;; the JVM's own file locks, the same on Linux, where this runs.
  (let [dir (ts/temp-dir)
        named (fn [] (set (.list dir)))
        child (ts/child-jvm (str "(let [copy (duratom.Native/extractLocked (java.io.ByteArrayInputStream. (.getBytes \"dll\"))"
                                 " (.toPath (java.io.File. " (pr-str (str dir)) ")))]"
                                 " (println (str (.getFileName copy))) (flush) (read-line))"))
        live (.readLine (java.io.BufferedReader. (java.io.InputStreamReader. (.getInputStream child))))
        crashed (str (Native/copyPrefix) "0000.dll")
        orphan (str (Native/copyPrefix) "1111.dll")]
    (is (str/starts-with? live (Native/copyPrefix)) live)
    (is (= (str "duratom-0.1.0-" (Native/expectedFingerprint) "-") (Native/copyPrefix)) "named by version and native-interface fingerprint")
    (is (str/ends-with? live ".dll") live)
    (spit (io/file dir crashed) "left by a JVM that died")
    (spit (io/file dir (str crashed ".lck")) "")
    (spit (io/file dir orphan) "lock file already gone")
    (spit (io/file dir "duratom-notes.txt") "not a copy")
    (testing "a copy whose lock a live JVM holds stays; unlocked and lock-less copies go"
      (is (= #{(io/file dir crashed) (io/file dir orphan)}
             (set (map #(.toFile ^java.nio.file.Path %) (Native/removeStaleCopies (.toPath dir))))))
      (is (= #{live (str live ".lck") "duratom-notes.txt"} (named))))
    (testing "once that JVM has exited, its copy is stale too"
      (.close (.getOutputStream child))
      (is (zero? (.waitFor child)))
      (is (= [(io/file dir live)] (map #(.toFile ^java.nio.file.Path %) (Native/removeStaleCopies (.toPath dir)))))
      (is (= #{"duratom-notes.txt"} (named))))))
