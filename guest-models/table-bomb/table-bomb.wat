;; Test fixture `table-bomb` (world `model`): `infer` grows a table
;; without end, 1024 elements at a time, so the host's table cap must stop
;; it. Stable Rust cannot emit `table.grow`, so this fixture is written by
;; hand in the component text format; tests/all/hostile.rs parses it with
;; the `wat` crate. `metadata` answers from a static record: input `x` and
;; output `y`, FP32 `[-1]`, like `misbehave`.
;;
;; The component model requires every record, variant and enum that an
;; exported function uses to be exported by name, so each type is exported
;; and the next ones are built from the exported names, as wit-component
;; does. The host matches types structurally.
(component
  (core module $m
    (memory (export "memory") 1)
    (table $t 1 funcref)
    (global $bump (mut i32) (i32.const 4096))

    ;; A bump allocator: enough for the host to copy one small request in.
    (func (export "cabi_realloc")
      (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
      (result i32)
      (local $ptr i32)
      (local.set $ptr
        (i32.and
          (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $bump (i32.add (local.get $ptr) (local.get $size)))
      (local.get $ptr))

    (func (export "metadata") (result i32)
      (i32.const 1024))

    ;; infer(request) with the request flattened to nine i32s; the result
    ;; would go through a pointer, but none is ever returned.
    (func (export "infer")
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (loop $grow
        (br_if $grow
          (i32.ne
            (table.grow $t (ref.null func) (i32.const 1024))
            (i32.const -1))))
      ;; table.grow answered -1 instead of trapping: a host without a
      ;; table cap that traps would end up here.
      unreachable)

    ;; model-metadata { name, version, platform, inputs, outputs }: five
    ;; (pointer, length) pairs.
    (data (i32.const 1024) "\b0\04\00\00\0a\00\00\00\ba\04\00\00\01\00\00\00\bb\04\00\00\07\00\00\00\28\04\00\00\01\00\00\00\3c\04\00\00\01\00\00\00")
    ;; tensor-spec { name: "x", datatype: fp32 (case 10), shape: [-1] }
    (data (i32.const 1064) "\c2\04\00\00\01\00\00\00\0a\00\00\00\c8\04\00\00\01\00\00\00")
    ;; tensor-spec { name: "y", datatype: fp32, shape: [-1] }
    (data (i32.const 1084) "\c3\04\00\00\01\00\00\00\0a\00\00\00\c8\04\00\00\01\00\00\00")
    (data (i32.const 1200) "table-bomb" "1" "fixture" "x" "y")
    ;; the shape [-1], one s64
    (data (i32.const 1224) "\ff\ff\ff\ff\ff\ff\ff\ff")
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $memory))
  (alias core export $i "cabi_realloc" (core func $realloc))

  (type $datatype' (enum "bool" "uint8" "uint16" "uint32" "uint64" "int8"
    "int16" "int32" "int64" "fp16" "fp32" "fp64" "bytes"))
  (export $datatype "datatype" (type $datatype'))
  (type $tensor-spec' (record
    (field "name" string)
    (field "datatype" $datatype)
    (field "shape" (list s64))))
  (export $tensor-spec "tensor-spec" (type $tensor-spec'))
  (type $model-metadata' (record
    (field "name" string)
    (field "version" string)
    (field "platform" string)
    (field "inputs" (list $tensor-spec))
    (field "outputs" (list $tensor-spec))))
  (export $model-metadata "model-metadata" (type $model-metadata'))
  (type $tensor-data' (variant
    (case "bool" (list bool))
    (case "uint8" (list u8))
    (case "uint16" (list u16))
    (case "uint32" (list u32))
    (case "uint64" (list u64))
    (case "int8" (list s8))
    (case "int16" (list s16))
    (case "int32" (list s32))
    (case "int64" (list s64))
    (case "fp16" (list u16))
    (case "fp32" (list f32))
    (case "fp64" (list f64))
    (case "bytes" (list (list u8)))))
  (export $tensor-data "tensor-data" (type $tensor-data'))
  (type $tensor' (record
    (field "name" string)
    (field "shape" (list u64))
    (field "data" $tensor-data)))
  (export $tensor "tensor" (type $tensor'))
  (type $parameter-value' (variant
    (case "bool" bool)
    (case "int" s64)
    (case "double" f64)
    (case "text" string)))
  (export $parameter-value "parameter-value" (type $parameter-value'))
  (type $infer-request' (record
    (field "id" (option string))
    (field "parameters" (list (tuple string $parameter-value)))
    (field "inputs" (list $tensor))
    (field "outputs" (list string))))
  (export $infer-request "infer-request" (type $infer-request'))
  (type $infer-response' (record (field "outputs" (list $tensor))))
  (export $infer-response "infer-response" (type $infer-response'))
  (type $error' (variant
    (case "invalid-input" string)
    (case "unsupported" string)
    (case "internal" string)
    (case "other" string)))
  (export $error "error" (type $error'))

  (func $metadata (result $model-metadata)
    (canon lift (core func $i "metadata") (memory $memory)))
  (func $infer (param "request" $infer-request)
    (result (result $infer-response (error $error)))
    (canon lift (core func $i "infer") (memory $memory) (realloc $realloc)))
  (instance $inference
    (export "metadata" (func $metadata))
    (export "infer" (func $infer)))
  (export "airlock:inference/inference@0.1.0" (instance $inference))
)
