//! `Engine::builder()` given no URL opens `WORKFLOW_DATABASE_URL`, as the
//! CLI does. One test in its own binary: it sets the process's environment,
//! which tests running beside it in one process would read too.

use workflow::prelude::*;

#[workflow(name = "greet")]
async fn greet(_ctx: Ctx, name: String) -> workflow::Result<String> {
    Ok(format!("hello {name}"))
}

#[tokio::test]
async fn the_builder_opens_the_database_the_environment_names() {
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("named.db");
    std::env::set_var(
        workflow::DATABASE_URL_VAR,
        format!("sqlite://{}", named.display()),
    );

    let engine = Engine::builder().register(Greet).build().await.unwrap();
    let inst = Greet::start(&engine, "ada".to_owned()).await.unwrap();
    // No worker: the instance is only recorded, in the file the variable names.
    drop(engine);
    let reader = Engine::builder()
        .database_url(format!("sqlite://{}", named.display()))
        .register(Greet)
        .build()
        .await
        .unwrap();
    let info = reader.instance(inst.id()).await.unwrap();
    assert_eq!(info.workflow, "greet");
    assert!(named.exists());

    // A URL given to the builder wins over the variable.
    let other = dir.path().join("other.db");
    let engine = Engine::builder()
        .database_url(format!("sqlite://{}", other.display()))
        .register(Greet)
        .build()
        .await
        .unwrap();
    let elsewhere = Greet::start(&engine, "bob".to_owned()).await.unwrap();
    assert!(other.exists());
    assert!(reader.instance(elsewhere.id()).await.is_err());

    // A bad value says where it came from.
    std::env::set_var(workflow::DATABASE_URL_VAR, "mysql://db/app");
    let err = Engine::builder()
        .register(Greet)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("WORKFLOW_DATABASE_URL"), "{err}");
    assert!(err.contains("mysql"), "{err}");
}
