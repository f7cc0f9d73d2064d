(ns duratom.native-abi-test
  "The native-interface check of duratom.Native: the loaded library's fingerprint (stamped
  by build.rs) must match the one this class computes from its own native
  declarations, and a library from another build is a clear error naming both
  fingerprints and where the library came from."
  (:require [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.test-support :as ts])
  (:import (duratom Native)))

(deftest the-loaded-library-matches-this-class
  (let [found (String. (Native/fingerprint) "US-ASCII")]
    (is (re-matches #"[0-9a-f]{16}" found))
    (is (= (Native/expectedFingerprint) found))
    (is (nil? (Native/fingerprintMismatch "x" found (Native/expectedFingerprint))))
    (is (str/includes? (Native/loadedFrom) "libduratom") (Native/loadedFrom))))

(deftest a-library-from-another-build-is-named-with-both-fingerprints
  (let [e (Native/fingerprintMismatch "/old/libduratom.so (named by duratom.native.path)" "0123456789abcdef" "fedcba9876543210")]
    (is (instance? UnsatisfiedLinkError e))
    (is (re-find #"native library /old/libduratom.so \(named by duratom.native.path\) has native-interface fingerprint 0123456789abcdef but this duratom.Native expects fedcba9876543210"
                 (.getMessage e))))
  (testing "a library without any fingerprint, loaded in a child JVM: the loader says which file and why"
    (let [foreign (->> ["lib/libzip.so" "lib/libjava.so" "lib/libnio.so"]
                       (map #(io/file (System/getProperty "java.home") %))
                       (filter #(.isFile ^java.io.File %))
                       first)
          _ (is (some? foreign) "the JDK has a shared library to stand in for a foreign build")
          ;; A copy: the JVM refuses to load the very file it loaded already.
          foreign (let [copy (io/file (ts/temp-dir) "libduratom-foreign.so")]
                    (io/copy foreign copy)
                    (.getPath copy))
          out (ts/child-output
               "(try (duratom.Native/ensureLoaded) (println \"loaded\")
                     (catch Throwable e (println (.getName (class e)) (.getMessage e))))"
               :jvm-opts [(str "-Dduratom.native.path=" foreign)])]
      (is (str/includes? out "java.lang.UnsatisfiedLinkError") out)
      (is (str/includes? out (str "the native library " foreign " (named by duratom.native.path) carries no native-interface fingerprint")) out)
      (is (str/includes? out (str "expected " (Native/expectedFingerprint))) out))))

(deftest classes-compiled-in-a-checkout-load-the-library-cargo-built-there
  ;; Leiningen compiles Native into target/jvm/classes; the loader finds the
  ;; checkout (the directory with Cargo.toml) above it, at whatever depth.
  (let [lib (.getCanonicalFile (io/file "target/release" (System/mapLibraryName "duratom")))]
    (is (.isFile lib) (str lib " is missing: the test command builds it (scripts/build-native)"))
    (let [out (ts/child-output "(println (duratom.Native/loadedFrom))"
                               :env {"DURATOM_NATIVE_PATH" nil})]
      (is (str/includes? out (str lib " (built in this checkout)")) out))))

(deftest a-library-that-did-not-load-gives-its-reason-at-every-construction
  ;; Not a failed static initializer, whose second use would say only
  ;; "NoClassDefFoundError: Could not initialize class duratom.Native".
  (let [missing (str (io/file (ts/temp-dir) "no-such-libduratom.so"))
        out (ts/child-output
             (str "(require '[duratom.core :as d])
                   (dotimes [_ 2]
                     (try (d/duratom :local-file :file-path " (pr-str (str (io/file (ts/temp-dir) "a.edn"))) " :init 0)
                          (println \"constructed\")
                          (catch Throwable e (println (.getName (class e)) (.getMessage e)))))")
             :jvm-opts [(str "-Dduratom.native.path=" missing)])
        lines (str/split-lines (str/trim out))]
    (is (= 2 (count lines)) out)
    (is (every? #(str/starts-with? % "java.lang.UnsatisfiedLinkError duratom: ") lines) out)
    (is (every? #(str/includes? % "named by the system property duratom.native.path") lines) out)
    (is (every? #(str/includes? % missing) lines) out)
    (is (apply = lines) "the second attempt gives the first one's error")))
