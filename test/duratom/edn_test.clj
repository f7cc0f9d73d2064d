(ns duratom.edn-test
  (:require [clojure.edn :as edn]
            [clojure.test :refer [deftest is testing]]
            [duratom.edn :as dedn]
            [duratom.readers :as readers]
            [duratom.test-support :as ts])
  (:import (java.nio.charset StandardCharsets)))

(deftest encodes-as-pr-str-reads
  (testing "every sample type reads back equal, with types and metadata"
    (let [v (ts/sample-value)
          back (dedn/decode (dedn/encode v))]
      (is (= v back))
      (is (= (ts/types-of v) (ts/types-of back)))))
  (testing "UTF-8 is the JVM's own, across chunk boundaries of a multi-megabyte value"
    (let [piece "a\u00e9\u20ac\uD83D\uDE00\"\\\n" ; 1, 2, 3 and 4-byte characters and escapes
          big (vec (repeat 200000 piece))
          e (dedn/encode-chunks big 16)]
      (is (< 1 (alength ^"[[B" (:chunks e))) "several chunks")
      (is (= big (dedn/decode (dedn/encode big))))
      (is (= (String. (dedn/encode big) StandardCharsets/UTF_8)
             (binding [*print-length* 3] (dedn/encode-string big)))
          "print vars do not cut the output")))
  (testing "what is written is plain EDN for clojure.edn"
    (is (= {:a #{1 2} "s" [1.5 2N 3M]} (edn/read-string readers/default (dedn/encode-string {:a #{1 2} "s" [1.5 2N 3M]}))))))
