//! Arrow schemas of the rows cotforge stores, and row <-> batch conversion.
//!
//! The JSON files in `schemas/` are the contract with training teams; the
//! Arrow schemas used at run time are *parsed from them* (compiled in with
//! `include_str!`), so code and documentation cannot drift: a builder that
//! produces a column the JSON does not describe fails `RecordBatch::try_new`,
//! and tests check every struct field in `record.rs` has a column.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde::Deserialize;

use super::{Result, StoreError};
use crate::record::{Chain, Recipe, Reject, Seed, Stage};

pub const SEEDS_JSON: &str = include_str!("../../schemas/seeds.json");
pub const CHAINS_JSON: &str = include_str!("../../schemas/chains.json");
pub const REJECTS_JSON: &str = include_str!("../../schemas/rejects.json");
pub const SFT_JSON: &str = include_str!("../../schemas/sft.json");
pub const PREFERENCE_JSON: &str = include_str!("../../schemas/preference.json");
pub const KTO_JSON: &str = include_str!("../../schemas/kto.json");
pub const PRM_JSON: &str = include_str!("../../schemas/prm.json");

/// A schema document of `schemas/*.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaDoc {
    pub name: String,
    pub version: u32,
    pub doc: String,
    pub fields: Vec<FieldDoc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FieldDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: TypeDoc,
    pub nullable: bool,
    #[serde(default)]
    pub doc: String,
}

/// `"utf8"`, `{"list": T, "item_nullable": b}` or `{"struct": [fields]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TypeDoc {
    Prim(String),
    List {
        list: Box<TypeDoc>,
        #[serde(default)]
        item_nullable: bool,
    },
    Struct {
        #[serde(rename = "struct")]
        fields: Vec<FieldDoc>,
    },
}

impl TypeDoc {
    fn to_arrow(&self) -> Result<DataType> {
        Ok(match self {
            TypeDoc::Prim(s) => match s.as_str() {
                "utf8" => DataType::Utf8,
                "float64" => DataType::Float64,
                "float32" => DataType::Float32,
                "int64" => DataType::Int64,
                "int32" => DataType::Int32,
                "uint32" => DataType::UInt32,
                "uint64" => DataType::UInt64,
                "bool" => DataType::Boolean,
                other => return Err(StoreError::Schema(format!("unknown type `{other}`"))),
            },
            TypeDoc::List {
                list,
                item_nullable,
            } => DataType::List(Arc::new(Field::new_list_field(
                list.to_arrow()?,
                *item_nullable,
            ))),
            TypeDoc::Struct { fields } => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(FieldDoc::to_arrow)
                    .collect::<Result<Vec<_>>>()?,
            )),
        })
    }
}

impl FieldDoc {
    fn to_arrow(&self) -> Result<Field> {
        let mut md = HashMap::new();
        if !self.doc.is_empty() {
            md.insert("doc".to_string(), self.doc.clone());
        }
        Ok(Field::new(&self.name, self.ty.to_arrow()?, self.nullable).with_metadata(md))
    }
}

impl SchemaDoc {
    pub fn parse(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| StoreError::Schema(e.to_string()))
    }
    /// The Arrow schema; schema-level metadata carries name and version.
    pub fn to_arrow(&self) -> Result<Schema> {
        let fields = self
            .fields
            .iter()
            .map(FieldDoc::to_arrow)
            .collect::<Result<Vec<_>>>()?;
        let md = HashMap::from([(
            "cotforge.schema".to_string(),
            format!("{}/v{}", self.name, self.version),
        )]);
        Ok(Schema::new(fields).with_metadata(md))
    }
}

fn cached(cell: &'static OnceLock<SchemaRef>, json: &'static str) -> SchemaRef {
    cell.get_or_init(|| {
        // The JSON is compiled in and covered by tests; failing here is a build defect.
        let s = SchemaDoc::parse(json)
            .and_then(|d| d.to_arrow())
            .unwrap_or_else(|e| panic!("built-in schema is invalid: {e}"));
        Arc::new(s)
    })
    .clone()
}

pub fn seeds_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, SEEDS_JSON)
}
pub fn chains_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, CHAINS_JSON)
}
pub fn rejects_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, REJECTS_JSON)
}
pub fn sft_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, SFT_JSON)
}
/// The preference export's rows; its batches are built against this schema.
pub fn preference_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, PREFERENCE_JSON)
}
/// The KTO export's rows.
pub fn kto_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, KTO_JSON)
}
/// The process-reward export's rows.
pub fn prm_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    cached(&S, PRM_JSON)
}

fn strs<'a, I: Iterator<Item = &'a str>>(it: I) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}
fn opt_strs<'a, I: Iterator<Item = Option<&'a str>>>(it: I) -> ArrayRef {
    Arc::new(it.collect::<StringArray>())
}

fn batch(schema: SchemaRef, cols: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema, cols).map_err(|e| StoreError::Schema(e.to_string()))
}

pub fn seeds_to_batch(rows: &[Seed]) -> Result<RecordBatch> {
    batch(
        seeds_schema(),
        vec![
            strs(rows.iter().map(|r| r.id.as_str())),
            strs(rows.iter().map(|r| r.prompt.as_str())),
            opt_strs(rows.iter().map(|r| r.system.as_deref())),
            opt_strs(rows.iter().map(|r| r.reference_answer.as_deref())),
            opt_strs(rows.iter().map(|r| r.response.as_deref())),
            opt_strs(rows.iter().map(|r| r.source.as_deref())),
            opt_strs(rows.iter().map(|r| r.lang.as_deref())),
            opt_strs(rows.iter().map(|r| r.meta.as_deref())),
        ],
    )
}

fn list_f64(schema: &Schema, name: &str, rows: &[&[f64]]) -> Result<ArrayRef> {
    let field = match schema.field_with_name(name).map(|f| f.data_type().clone()) {
        Ok(DataType::List(f)) => f,
        _ => return Err(StoreError::Schema(format!("`{name}` is not a list"))),
    };
    let values = Float64Array::from_iter_values(rows.iter().flat_map(|r| r.iter().copied()));
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.len()));
    ListArray::try_new(field, offsets, Arc::new(values), None)
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|e| StoreError::Schema(e.to_string()))
}

pub fn chains_to_batch(rows: &[Chain]) -> Result<RecordBatch> {
    let schema = chains_schema();
    let confs: Vec<&[f64]> = rows.iter().map(|r| r.step_confidences.as_slice()).collect();
    let cols: Vec<ArrayRef> = vec![
        strs(rows.iter().map(|r| r.id.as_str())),
        strs(rows.iter().map(|r| r.seed_id.as_str())),
        opt_strs(rows.iter().map(|r| r.recipe.map(Recipe::as_str))),
        opt_strs(rows.iter().map(|r| r.system.as_deref())),
        strs(rows.iter().map(|r| r.prompt.as_str())),
        strs(rows.iter().map(|r| r.reasoning.as_str())),
        strs(rows.iter().map(|r| r.answer.as_str())),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.reward),
        )),
        list_f64(&schema, "step_confidences", &confs)?,
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.tokens))),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.reflections),
        )),
        Arc::new(rows.iter().map(|r| r.verified).collect::<BooleanArray>()),
        opt_strs(rows.iter().map(|r| r.reference_answer.as_deref())),
        strs(rows.iter().map(|r| r.model.as_str())),
        strs(rows.iter().map(|r| r.model_blake3.as_str())),
        strs(rows.iter().map(|r| r.settings.as_str())),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.created_at),
        )),
        Arc::new(rows.iter().map(|r| r.selected).collect::<BooleanArray>()),
        Arc::new(rows.iter().map(|r| r.value).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.agreement).collect::<Float64Array>()),
    ];
    batch(schema, cols)
}

pub fn rejects_to_batch(rows: &[Reject]) -> Result<RecordBatch> {
    batch(
        rejects_schema(),
        vec![
            strs(rows.iter().map(|r| r.seed_id.as_str())),
            opt_strs(rows.iter().map(|r| r.chain_id.as_deref())),
            opt_strs(rows.iter().map(|r| r.recipe.map(Recipe::as_str))),
            strs(rows.iter().map(|r| r.stage.as_str())),
            strs(rows.iter().map(|r| r.reason.as_str())),
            strs(rows.iter().map(|r| r.row.as_str())),
        ],
    )
}

/// The columns of one batch by name, each cast to the type the decoder asks
/// for: a writer that picked int64 for `tokens` (or another list item
/// nullability) still reads, and a column added after v1 (`selected`,
/// `value`, `agreement`) or any optional one may be absent and reads as null.
struct Cols<'a>(&'a RecordBatch);

impl Cols<'_> {
    fn err(column: &str, msg: impl Into<String>) -> StoreError {
        StoreError::Column {
            column: column.into(),
            msg: msg.into(),
        }
    }

    fn get(&self, name: &str, ty: &DataType) -> Result<Option<ArrayRef>> {
        let Some(col) = self.0.column_by_name(name) else {
            return Ok(None);
        };
        arrow::compute::cast(col, ty)
            .map(Some)
            .map_err(|e| Self::err(name, e.to_string()))
    }

    /// A column as a concrete array type; `None` when absent (an error when
    /// `required`).
    fn typed<T: Array + Clone + 'static>(
        &self,
        name: &str,
        ty: &DataType,
        required: bool,
    ) -> Result<Option<T>> {
        match self.get(name, ty)? {
            None if required => Err(Self::err(name, "missing")),
            None => Ok(None),
            Some(a) => a
                .as_any()
                .downcast_ref::<T>()
                .cloned()
                .map(Some)
                .ok_or_else(|| Self::err(name, format!("not {ty}"))),
        }
    }

    fn strings(&self, name: &str, required: bool) -> Result<Vec<Option<String>>> {
        let n = self.0.num_rows();
        let Some(a) = self.typed::<StringArray>(name, &DataType::Utf8, required)? else {
            return Ok(vec![None; n]);
        };
        Ok((0..n)
            .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
            .collect())
    }

    /// The `recipe` column: null or empty is no recipe; a name the pipeline
    /// does not know is an error (never silently dropped to no recipe).
    fn recipes(&self) -> Result<Vec<Option<Recipe>>> {
        self.strings("recipe", false)?
            .into_iter()
            .map(|s| match s {
                None => Ok(None),
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|m| Self::err("recipe", m)),
            })
            .collect()
    }
}

/// Row `i` of an optional column when the column is there and the value not null.
fn at<T: Array>(v: &Option<T>, i: usize) -> Option<&T> {
    v.as_ref().filter(|a| a.is_valid(i))
}

/// Read back chains written by [`chains_to_batch`], or by another writer of
/// the same columns (cast to the schema's types, see `Cols`): the one decoder of the chains schema
/// (shards, finalize, export, report).
pub fn batch_to_chains(b: &RecordBatch) -> Result<Vec<Chain>> {
    let c = Cols(b);
    let s = |name: &str| c.strings(name, true);
    let o = |name: &str| c.strings(name, false);
    let mut id = s("id")?.into_iter();
    let mut seed_id = s("seed_id")?.into_iter();
    let mut prompt = s("prompt")?.into_iter();
    let mut reasoning = s("reasoning")?.into_iter();
    let mut answer = s("answer")?.into_iter();
    let mut recipe = c.recipes()?.into_iter();
    let mut system = o("system")?.into_iter();
    let mut reference = o("reference_answer")?.into_iter();
    let mut model = o("model")?.into_iter();
    let mut model_b3 = o("model_blake3")?.into_iter();
    let mut settings = o("settings")?.into_iter();
    let f64s = |name: &str, req: bool| c.typed::<Float64Array>(name, &DataType::Float64, req);
    let u32s = |name: &str| c.typed::<UInt32Array>(name, &DataType::UInt32, false);
    let bools = |name: &str| c.typed::<BooleanArray>(name, &DataType::Boolean, false);
    let reward = f64s("reward", true)?;
    let (value, agreement) = (f64s("value", false)?, f64s("agreement", false)?);
    let (tokens, reflections) = (u32s("tokens")?, u32s("reflections")?);
    let (verified, selected) = (bools("verified")?, bools("selected")?);
    let created = c.typed::<Int64Array>("created_at", &DataType::Int64, false)?;
    let steps = c.typed::<ListArray>(
        "step_confidences",
        &DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
        false,
    )?;
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let step_confidences = match at(&steps, i) {
            Some(l) => l
                .value(i)
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| Cols::err("step_confidences", "items are not float64"))?
                .iter()
                .flatten()
                .collect(),
            None => Vec::new(),
        };
        out.push(Chain {
            id: id.next().flatten().unwrap_or_default(),
            seed_id: seed_id.next().flatten().unwrap_or_default(),
            recipe: recipe.next().flatten(),
            system: system.next().flatten(),
            prompt: prompt.next().flatten().unwrap_or_default(),
            reasoning: reasoning.next().flatten().unwrap_or_default(),
            answer: answer.next().flatten().unwrap_or_default(),
            reward: at(&reward, i).map_or(0.0, |a| a.value(i)),
            step_confidences,
            tokens: at(&tokens, i).map_or(0, |a| a.value(i)),
            reflections: at(&reflections, i).map_or(0, |a| a.value(i)),
            verified: at(&verified, i).map(|a| a.value(i)),
            reference_answer: reference.next().flatten(),
            model: model.next().flatten().unwrap_or_default(),
            model_blake3: model_b3.next().flatten().unwrap_or_default(),
            settings: settings.next().flatten().unwrap_or_default(),
            created_at: at(&created, i).map_or(0, |a| a.value(i)),
            selected: at(&selected, i).map(|a| a.value(i)),
            value: at(&value, i).map(|a| a.value(i)),
            agreement: at(&agreement, i).map(|a| a.value(i)),
        });
    }
    Ok(out)
}

/// Read back rejects written by [`rejects_to_batch`] (the one decoder of the
/// rejects schema; tolerant as [`batch_to_chains`]).
pub fn batch_to_rejects(b: &RecordBatch) -> Result<Vec<Reject>> {
    let c = Cols(b);
    let mut seed_id = c.strings("seed_id", true)?.into_iter();
    let mut chain_id = c.strings("chain_id", false)?.into_iter();
    let mut recipe = c.recipes()?.into_iter();
    let mut stage = c
        .strings("stage", true)?
        .into_iter()
        .map(|s| {
            let s = s.unwrap_or_default();
            s.parse::<Stage>()
                .map_err(|_| Cols::err("stage", format!("unknown reject stage '{s}'")))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    let mut reason = c.strings("reason", true)?.into_iter();
    let mut row = c.strings("row", false)?.into_iter();
    Ok((0..b.num_rows())
        .map(|_| Reject {
            seed_id: seed_id.next().flatten().unwrap_or_default(),
            chain_id: chain_id.next().flatten(),
            recipe: recipe.next().flatten(),
            stage: stage.next().unwrap_or_default(),
            reason: reason.next().flatten().unwrap_or_default(),
            row: row.next().flatten().unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<T: serde::Serialize>(v: &T) -> Vec<String> {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn names(s: &Schema) -> Vec<String> {
        let mut v: Vec<String> = s.fields().iter().map(|f| f.name().clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn every_record_field_has_a_column() {
        assert_eq!(names(&seeds_schema()), keys(&Seed::default()));
        assert_eq!(names(&chains_schema()), keys(&Chain::default()));
        assert_eq!(names(&rejects_schema()), keys(&Reject::default()));
    }

    #[test]
    fn json_schemas_match_the_arrow_types_built_in_code() {
        let hand = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("seed_id", DataType::Utf8, false),
            Field::new("recipe", DataType::Utf8, true),
            Field::new(
                "messages",
                DataType::List(Arc::new(Field::new_list_field(
                    DataType::Struct(Fields::from(vec![
                        Field::new("role", DataType::Utf8, false),
                        Field::new("content", DataType::Utf8, false),
                    ])),
                    false,
                ))),
                false,
            ),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("completion", DataType::Utf8, false),
            Field::new("system", DataType::Utf8, true),
            Field::new("reward", DataType::Float64, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("verified", DataType::Boolean, true),
        ]);
        fn bare(f: &Field) -> Field {
            let dt = match f.data_type() {
                DataType::List(i) => DataType::List(Arc::new(bare(i))),
                DataType::Struct(fs) => {
                    DataType::Struct(fs.iter().map(|x| bare(x)).collect::<Vec<_>>().into())
                }
                d => d.clone(),
            };
            Field::new(f.name(), dt, f.is_nullable())
        }
        let strip = |s: &Schema| -> Vec<Field> { s.fields().iter().map(|f| bare(f)).collect() };
        assert_eq!(strip(&sft_schema()), strip(&hand));
        let chains = chains_schema();
        assert_eq!(
            chains
                .field_with_name("step_confidences")
                .map(|f| f.data_type().clone())
                .ok(),
            Some(DataType::List(Arc::new(Field::new_list_field(
                DataType::Float64,
                false
            ))))
        );
        assert_eq!(
            chains
                .field_with_name("created_at")
                .map(|f| f.data_type().clone())
                .ok(),
            Some(DataType::Int64)
        );
    }

    /// The one decoder: an unknown recipe is an error naming the column (the
    /// store's old decoder read it as no recipe, the report's refused it),
    /// other integer widths are cast, absent optional columns read as null.
    #[test]
    fn decoder_refuses_unknown_recipes_and_casts_widths() {
        let b = RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(vec!["c"])) as ArrayRef),
            (
                "seed_id",
                Arc::new(StringArray::from(vec!["s"])) as ArrayRef,
            ),
            (
                "recipe",
                Arc::new(StringArray::from(vec!["bogus"])) as ArrayRef,
            ),
            ("prompt", Arc::new(StringArray::from(vec!["p"])) as ArrayRef),
            (
                "reasoning",
                Arc::new(StringArray::from(vec!["r"])) as ArrayRef,
            ),
            ("answer", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            (
                "reward",
                Arc::new(Float64Array::from(vec![0.5])) as ArrayRef,
            ),
            ("tokens", Arc::new(Int64Array::from(vec![7])) as ArrayRef),
        ])
        .expect("batch");
        let e = batch_to_chains(&b).expect_err("unknown recipe");
        assert!(e.to_string().contains("column 'recipe'"), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
        let fixed = RecordBatch::try_new(
            b.schema(),
            b.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 2 {
                        Arc::new(StringArray::from(vec!["open_o1"])) as ArrayRef
                    } else {
                        c.clone()
                    }
                })
                .collect(),
        )
        .expect("batch");
        let rows = batch_to_chains(&fixed).expect("rows");
        assert_eq!(rows[0].recipe, Some(Recipe::OpenO1));
        assert_eq!(rows[0].tokens, 7);
        assert_eq!(rows[0].verified, None);
        assert!(rows[0].step_confidences.is_empty());
    }

    #[test]
    fn rows_roundtrip_through_batches() {
        let c = Chain {
            id: "c".into(),
            seed_id: "s".into(),
            recipe: Some(Recipe::MarcoCot),
            prompt: "p".into(),
            reward: 0.5,
            step_confidences: vec![0.25, 0.75],
            verified: Some(true),
            created_at: 7,
            ..Default::default()
        };
        let b = chains_to_batch(&[c.clone(), Chain::default()]).expect("batch");
        assert_eq!(
            batch_to_chains(&b).expect("read"),
            vec![c, Chain::default()]
        );
        let r = Reject {
            seed_id: "s".into(),
            stage: Stage::Ingest,
            reason: "empty prompt".into(),
            ..Default::default()
        };
        let b = rejects_to_batch(std::slice::from_ref(&r)).expect("batch");
        assert_eq!(batch_to_rejects(&b).expect("read"), vec![r]);
        let s = Seed {
            id: "x".into(),
            prompt: "y".into(),
            meta: Some("{}".into()),
            ..Default::default()
        };
        assert_eq!(seeds_to_batch(&[s]).expect("batch").num_rows(), 1);
    }
}
