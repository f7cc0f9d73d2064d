(ns duratom.native-platform-test
  "The loader's choice of bundled library (java/duratom/NativePlatform.java):
  every os.name / os.arch spelling maps to the jar's folder names, and a JVM
  on a platform the jar does not carry gets an error naming what it saw and
  what the jar has."
  (:require [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.test-support :as ts])
  (:import (duratom NativePlatform)
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
           ;; platforms no jar carries keep a recognisable name for the error
           ["Windows 10" "amd64" "windows-x86_64"]
           ["FreeBSD" "amd64" "freebsd-x86_64"]
           ["Linux" "ppc64le" "linux-ppc64le"]
           ["Linux" "i386" "linux-x86"]
           ["SunOS" "sparcv9" "sunos-sparcv9"]
           [nil nil "unknown-unknown"]]]
    (is (= expected (NativePlatform/of os-name os-arch)) (str os-name " / " os-arch))))

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

(deftest a-platform-the-jar-lacks-gets-an-error-naming-both
  (testing "in a child JVM that reports another architecture and loads duratom.Native from a jar"
    (let [dir (ts/temp-dir)
          lib (System/mapLibraryName "duratom")
          jar (write-jar! (io/file dir "duratom.jar")
                          {"duratom/Native.class" (class-bytes "Native")
                           "duratom/NativePlatform.class" (class-bytes "NativePlatform")
                           (str "duratom/native/linux-x86_64/" lib) (.getBytes "never loaded")
                           (str "duratom/native/macos-aarch64/" lib) (.getBytes "never loaded")})
          out (ts/child-output
               "(try (duratom.Native/ensureLoaded) (print :loaded)
                     (catch Throwable e (print (.getName (class e)) (.getMessage e))))"
               ;; the jar first, so duratom.Native comes from it and not from target/classes
               ;; without native-resources/, whose platforms (four, after
               ;; scripts/release staged them) would be counted as the jar's
               :jvm-opts ["-Dos.arch=ppc64le"
                          "-cp" (str/join java.io.File/pathSeparator
                                          (cons jar (remove #(str/ends-with? % "native-resources")
                                                            (str/split (System/getProperty "java.class.path")
                                                                       (re-pattern java.io.File/pathSeparator)))))]
               :env {"DURATOM_NATIVE_PATH" nil})]
      (is (str/starts-with? out "java.lang.UnsatisfiedLinkError") out)
      (is (str/includes? out "platform linux-ppc64le") out)
      (is (str/includes? out "os.arch=\"ppc64le\"") out)
      (is (str/includes? out "it carries linux-x86_64, macos-aarch64.") out)
      (is (str/includes? out "duratom.native.path") out))))
